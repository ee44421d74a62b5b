// Command kvctl is the command-line client of kvstore. Run "kvctl --help"
// for the commands; the code is in cmd/internal/ctl.
package main

import (
	"os"

	"github.com/kvstore/kvstore/cmd/internal/ctl"
)

func main() { os.Exit(ctl.Main()) }
