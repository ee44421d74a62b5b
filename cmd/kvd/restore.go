package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/kvstore/kvstore/node"
)

// runRestore is "kvd restore": it prepares a data directory that starts a
// new cluster from a snapshot file, as etcdutl snapshot restore does.
func runRestore(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kvd restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "snapshot file to restore (kvctl snapshot save)")
	dataDir := fs.String("data-dir", "", "data directory to create; must not exist, or be empty")
	name := fs.String("name", "", "node id of the restored node (default: random, as a first start picks)")
	advertise := fs.String("advertise", "", "address the new cluster's configuration gives the node (default: "+node.DefaultListen+"; a node started elsewhere corrects it)")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: kvd restore --from FILE --data-dir DIR [--name NAME] [--advertise HOST:PORT]

Prepares DIR to start a new cluster holding exactly the data of the snapshot
FILE (kvctl snapshot save), under a new cluster id: start kvd on DIR, and the
other nodes of the new cluster with empty data dirs joining it; they receive
the data by raft. Members of the old cluster are refused. FILE is checked
whole before anything is written: a damaged or truncated file writes nothing.
Each flag can be set in the environment as KVD_<FLAG>.

Flags:
`)
		fs.PrintDefaults()
	}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err == nil {
		err = applyEnv(fs)
	}
	if err == nil && *from == "" {
		err = errors.New("--from is required: the snapshot file to restore")
	}
	if err == nil && *dataDir == "" {
		err = errors.New("--data-dir is required: the data directory to create")
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvd restore: %v\n", err)
		fs.Usage()
		return 2
	}
	logger, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "kvd restore: %v\n", err)
		return 2
	}
	r, err := node.Restore(node.RestoreConfig{From: *from, DataDir: *dataDir, Name: *name, Advertise: *advertise, Logger: logger})
	var ce *node.ConfigError
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "kvd restore: --%s %s: %s\n", flagOf[ce.Field], ce.Value, ce.Reason)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvd restore: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "restored %s into %s: revision %d, %d keys; node %s of the new cluster %s (took %v)\n",
		*from, *dataDir, r.Snapshot.Revision, r.Snapshot.Keys, r.NodeID, r.ClusterID, r.Took.Round(1e6))
	return 0
}
