// Command kvd runs a kvstore node.
//
//	kvd [flags]
//	kvd dev [--nodes 3]    a throwaway cluster in one process
//	kvd restore --from FILE --data-dir DIR    a new cluster from a snapshot
//
// With no flags it keeps its data in ./kvd-data and serves on
// 127.0.0.1:7379. Every flag can also be set in the environment as KVD_ and
// the flag's name in capitals with underscores (KVD_DATA_DIR for
// --data-dir); a flag on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/cmd/internal/ctl"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/tlsconf"
)

func main() {
	// Called as kvctl (a link to this binary, as in the container image,
	// where one binary under both names halves the image), be kvctl.
	if filepath.Base(os.Args[0]) == "kvctl" {
		os.Exit(ctl.Main())
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

type options struct {
	node      node.Config
	logFormat string
	logLevel  string
	gossipKey string
	tlsMin    string
}

// listFlag collects a comma list, from one flag or several.
type listFlag struct{ list *[]string }

func (f listFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*f.list = append(*f.list, s)
		}
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("kvd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := api.DefaultLimits()
	fs.StringVar(&o.node.DataDir, "data-dir", "./kvd-data", "directory for the node's data")
	fs.StringVar(&o.node.Listen, "listen", node.DefaultListen, "address of the node's one port (API, raft)")
	fs.StringVar(&o.node.Advertise, "advertise", "", "address other nodes and clients dial (default: the listen address)")
	fs.StringVar(&o.node.Name, "name", "", "node id (default: stored in the data dir, random on first start)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	intVar(fs, &o.node.Limits.MaxKeyBytes, "max-key-bytes", d.MaxKeyBytes, 1, "longest key, in bytes")
	intVar(fs, &o.node.Limits.MaxValueBytes, "max-value-bytes", d.MaxValueBytes, 1, "largest value, in bytes")
	intVar(fs, &o.node.Limits.MaxRequestBytes, "max-request-bytes", d.MaxRequestBytes, 1, "largest request, in bytes")
	int64Var(fs, &o.node.Limits.MaxRangePairs, "max-range-pairs", d.MaxRangePairs, 1, "largest page of a range, in pairs")
	intVar(fs, &o.node.Limits.MaxTxnOps, "max-txn-ops", d.MaxTxnOps, 1, "most compares, and most operations per branch, in a txn")
	durationVar(fs, &o.node.RequestTimeout, "request-timeout", 10*time.Second, 1, "deadline for requests that come without one")
	durationVar(fs, &o.node.AuthTokenTTL, "auth-token-ttl", 5*time.Minute, 1, "how long an authentication token works")
	fs.Var(listFlag{&o.node.Join}, "join", "seed addresses to join, comma list or repeated (host:port, or a name resolving to several)")
	intVar(fs, &o.node.BootstrapExpect, "bootstrap-expect", 0, 0, "start a new cluster once this many servers see each other (0 or 1 without --join: alone)")
	intVar(fs, &o.node.MaxVoters, "max-voters", 5, 1, "most raft voters; other nodes serve reads as non-voters")
	durationVar(fs, &o.node.DeadAfter, "dead-after", 30*time.Second, 1, "remove a member dead for this long (never below quorum)")
	o.node.Retention = consensus.Retention{Age: time.Hour}
	fs.Var(retentionFlag{&o.node.Retention}, "auto-compact-retention", "history kept before automatic compaction: an age (1h) or a number of revisions (10000); 0 keeps everything")
	fs.DurationVar(&o.node.ConsistencyCheck, "consistency-check-interval", node.DefaultConsistencyCheck, "how often the leader compares the members' states and raises a CORRUPT alarm on a mismatch; 0 never")
	int64Var(fs, &o.node.QuotaBytes, "quota-bytes", node.DefaultQuotaBytes, 0, "space quota of the key-value state, in bytes: past it the cluster raises a NOSPACE alarm and refuses writes that add data; 0 for none")
	fs.BoolVar(&o.node.Pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on the node's port")
	fs.BoolVar(&o.node.NoMetrics, "no-metrics", false, "record no Prometheus metrics and serve no /metrics (to measure what they cost)")
	fs.StringVar(&o.gossipKey, "gossip-key", "", "base64 key (16, 24 or 32 bytes) encrypting gossip")
	t := &o.node.TLS
	fs.StringVar(&t.CertFile, "cert-file", "", "TLS certificate (PEM, with its chain) the node shows clients; turns TLS on")
	fs.StringVar(&t.KeyFile, "key-file", "", "key of --cert-file (PEM)")
	fs.StringVar(&t.TrustedCAFile, "trusted-ca-file", "", "CA certificates (PEM) that client certificates are verified against")
	fs.BoolVar(&t.ClientCertAuth, "client-cert-auth", false, "require every client to show a certificate from --trusted-ca-file")
	fs.StringVar(&t.PeerCertFile, "peer-cert-file", "", "TLS certificate the node shows other nodes and dials them with; it must allow server and client authentication (default: --cert-file)")
	fs.StringVar(&t.PeerKeyFile, "peer-key-file", "", "key of --peer-cert-file (default: --key-file)")
	fs.StringVar(&t.PeerTrustedCAFile, "peer-trusted-ca-file", "", "CA certificates that other nodes' certificates must come from: only they reach raft, gossip streams, forwarding and the peer services (default: --trusted-ca-file)")
	fs.StringVar(&o.tlsMin, "tls-min-version", "1.2", "lowest TLS version spoken: 1.2 or 1.3")
	fs.BoolVar(&t.AutoTLS, "auto-tls", false, "TLS with a self-signed certificate made at start, when no --cert-file is given: for trying TLS out, unsafe for production")
	fs.BoolVar(&o.node.AllowPlaintextClients, "allow-plaintext-clients", false, "with TLS on, still serve the API to plaintext clients (peers always need TLS)")
	durationVar(fs, &o.node.HeartbeatTimeout, "raft-timeout", consensus.DefaultRaftTimeout, node.MinRaftTimeout, "raft heartbeat and election timeout: how long followers wait for a silent leader before electing another")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kvd [flags]\n       kvd dev [--nodes 3]   (a throwaway cluster, see kvd dev --help)\n       kvd restore --from FILE --data-dir DIR   (a new cluster from a snapshot, see kvd restore --help)\n\nRuns a kvstore node. Each flag can be set in the environment as KVD_<FLAG>,\nfor example KVD_DATA_DIR for --data-dir; a flag on the command line wins.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := applyEnv(fs); err != nil {
		return nil, err
	}
	o.node.ElectionTimeout = o.node.HeartbeatTimeout
	if o.node.QuotaBytes == 0 {
		o.node.QuotaBytes = -1 // node.Config's 0 is its default
	}
	if o.node.ConsistencyCheck == 0 {
		o.node.ConsistencyCheck = -1 // node.Config's 0 is its default
	}
	if o.gossipKey != "" {
		key, err := membership.ParseKey(o.gossipKey)
		if err != nil {
			return nil, fmt.Errorf("--gossip-key: %w", err)
		}
		o.node.GossipKey = key
	}
	if _, err := newLogger(io.Discard, o.logFormat, o.logLevel); err != nil {
		return nil, err
	}
	v, err := tlsconf.ParseVersion(o.tlsMin)
	if err != nil {
		return nil, fmt.Errorf("--tls-min-version: %w", err)
	}
	o.node.TLS.MinVersion = v
	if err := o.node.Validate(); err != nil {
		var ce *node.ConfigError
		if errors.As(err, &ce) {
			if ce.Field == "TLS" {
				return nil, fmt.Errorf("TLS flags: %s", ce.Reason)
			}
			if name, ok := flagOf[ce.Field]; ok {
				return nil, fmt.Errorf("--%s %s: %s", name, ce.Value, ce.Reason)
			}
		}
		return nil, err
	}
	return o, nil
}

// flagOf names the flag of each node.Config field whose value the node
// checks itself (the others are checked by their flag's type).
var flagOf = map[string]string{
	"DataDir":               "data-dir",
	"Listen":                "listen",
	"Advertise":             "advertise",
	"Name":                  "name",
	"Join":                  "join",
	"GossipKey":             "gossip-key",
	"AllowPlaintextClients": "allow-plaintext-clients",
}

// applyEnv sets every flag not given on the command line from KVD_<NAME>.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := "KVD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, serr)
			}
		}
	})
	return err
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "dev" {
		return runDev(args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "restore" {
		return runRestore(args[1:], os.Stdout, stderr)
	}
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvd: %v\n", err)
		return 2
	}
	logger, err := newLogger(stderr, o.logFormat, o.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "kvd: %v\n", err)
		return 2
	}
	o.node.Logger = logger
	o.node.Version = version()
	if os.Getenv("GOGC") == "" {
		// Half the default heap headroom: a node's heap is mostly Badger's
		// buffers, and at GOGC=100 the headroom alone doubles the RSS. It
		// cost no measurable throughput (100,000 puts, 64 clients: RSS
		// 328 MB -> 253 MB, 14,950 -> 15,400 puts/s). GOGC still overrides.
		debug.SetGCPercent(50)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	n, err := node.Start(ctx, o.node)
	cancel()
	if err != nil {
		logger.Error("cannot start", "error", err)
		return 1
	}

	trimCtx, stopTrim := context.WithCancel(context.Background())
	defer stopTrim()
	go trimMemory(trimCtx, trimEvery, logger)

	sig := <-sigs
	logger.Info("stopping; a second signal forces exit", "signal", sig.String())
	go func() {
		<-sigs
		logger.Error("second signal: exiting now")
		os.Exit(1)
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Leave(ctx); err != nil {
		logger.Error("could not leave the cluster cleanly; the others will remove this node once it is dead", "error", err)
	}
	if err := n.Close(ctx); err != nil {
		logger.Error("stopped with errors", "error", err)
		return 1
	}
	return 0
}

// retentionFlag is --auto-compact-retention.
type retentionFlag struct{ r *consensus.Retention }

func (f retentionFlag) String() string {
	if f.r == nil {
		return ""
	}
	return f.r.String()
}

func (f retentionFlag) Set(s string) error {
	r, err := consensus.ParseRetention(s)
	if err != nil {
		return err
	}
	*f.r = r
	return nil
}
