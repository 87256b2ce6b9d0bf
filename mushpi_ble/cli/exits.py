"""The command line's exit codes, one meaning each (documented in the README).

A unit file's ``RestartPreventExitStatus=`` names ``CONFIG``: a bad setting is
not cured by restarting every few seconds.
"""

OK = 0
FAILED = 1
"""A check found a problem, or a run could not do its job (start, a refused call)."""
USAGE = 2
"""The command line itself is wrong (argparse's own code)."""
CONFIG = 3
"""A setting or settings file is invalid; the message names the variable."""
