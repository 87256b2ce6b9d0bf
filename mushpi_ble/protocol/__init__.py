"""The MushPi wire protocol: UUIDs, name tables, payload codecs and validation.

Pure code (no I/O, no trio). Every characteristic has a frozen attrs value
class with ``pack()`` / ``unpack()`` and conversions to and from the dicts
the controller speaks; decoders of writable characteristics validate and
raise :class:`InvalidPayload`, which tells the GATT layer how to answer.
"""

from ._coerce import BytesLike
from .actuator import ActuatorState, ActuatorStatus
from .env import READINGS, EnvMeasurement, SensorReadings, encode_env, unusable_readings
from .errors import (
    APP_ERROR_DESCRIPTIONS,
    AppError,
    InvalidPayload,
)
from .names import (
    LIGHT_MODES,
    MODES,
    SPECIES,
    STAGES,
    UNKNOWN,
    ControlMode,
    LightMode,
    StatusFlag,
    light_mode_id,
    light_mode_name,
    mode_id,
    mode_name,
    species_id,
    species_name,
    stage_id,
    stage_name,
)
from .overrides import ACCEPTED_MASK, OverrideBits, OverridesDict
from .stage import MAX_STAGE_AGE_S, StageDict, StageState
from .status import StatusFlags
from .table import (
    CHARACTERISTICS,
    FIXED_SIZES,
    NOTIFYING,
    REQUIRED_BY_APP,
    WRITABLE,
    Characteristic,
    Notify,
    Read,
    ReadSource,
    Write,
    by_name,
    decode_write,
)
from .targets import ControlTargets, ControlTargetsDict, LightDict
from .thresholds import (
    DEFAULT_QUERY,
    MAX_THRESHOLDS_PAYLOAD,
    THRESHOLD_KEYS,
    ThresholdsQuery,
    ThresholdsUpdate,
    decode_thresholds_write,
    encode_thresholds_answer,
)
from .uuids import (
    ACTUATOR_STATUS,
    CHARACTERISTIC_NAMES,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    ENV_MEASUREMENTS,
    OVERRIDE_BITS,
    SERVICE_UUID,
    STAGE_STATE,
    STAGE_THRESHOLDS,
    STATUS_FLAGS,
)

__all__ = [
    "ACCEPTED_MASK",
    "ACTUATOR_STATUS",
    "APP_ERROR_DESCRIPTIONS",
    "CHARACTERISTICS",
    "CHARACTERISTIC_NAMES",
    "CHARACTERISTIC_UUIDS",
    "CONTROL_TARGETS",
    "DEFAULT_QUERY",
    "ENV_MEASUREMENTS",
    "FIXED_SIZES",
    "LIGHT_MODES",
    "MAX_STAGE_AGE_S",
    "MAX_THRESHOLDS_PAYLOAD",
    "MODES",
    "NOTIFYING",
    "OVERRIDE_BITS",
    "READINGS",
    "REQUIRED_BY_APP",
    "SERVICE_UUID",
    "SPECIES",
    "STAGES",
    "STAGE_STATE",
    "STAGE_THRESHOLDS",
    "STATUS_FLAGS",
    "THRESHOLD_KEYS",
    "UNKNOWN",
    "WRITABLE",
    "ActuatorState",
    "ActuatorStatus",
    "AppError",
    "BytesLike",
    "Characteristic",
    "ControlMode",
    "ControlTargets",
    "ControlTargetsDict",
    "EnvMeasurement",
    "InvalidPayload",
    "LightDict",
    "LightMode",
    "Notify",
    "OverrideBits",
    "OverridesDict",
    "Read",
    "ReadSource",
    "SensorReadings",
    "StageDict",
    "StageState",
    "StatusFlag",
    "StatusFlags",
    "ThresholdsQuery",
    "ThresholdsUpdate",
    "Write",
    "by_name",
    "decode_thresholds_write",
    "decode_write",
    "encode_env",
    "encode_thresholds_answer",
    "light_mode_id",
    "light_mode_name",
    "mode_id",
    "mode_name",
    "species_id",
    "species_name",
    "stage_id",
    "stage_name",
    "unusable_readings",
]
