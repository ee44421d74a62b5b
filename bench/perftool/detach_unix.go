//go:build unix

package main

import (
	"os/exec"
	"syscall"
)

// detach puts the kvd that start runs in a process group of its own, so
// that it keeps running after perftool exits and a Ctrl-C meant for the
// script around it does not reach it.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
