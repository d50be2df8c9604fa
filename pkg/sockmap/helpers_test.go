package sockmap

import "os/exec"

type exec_ExitError = exec.ExitError

type dialError struct{ stderr string }

func (e *dialError) Error() string { return "client failed: " + e.stderr }
