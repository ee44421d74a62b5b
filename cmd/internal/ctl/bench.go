package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/api/client/bench"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// benchOptions are the flags of kvctl bench.
type benchOptions struct {
	workload    string
	consistency string
	readRatio   float64
	rangeLimit  int64
	clients     int
	conns       int
	keySize     int
	valueSize   int
	keyspace    int
	prefixes    []string
	total       int64
	duration    time.Duration
	rate        float64
	preload     bool
	target      string
	seed        uint64
	cpuProfile  string
}

// benchReport is the JSON output of kvctl bench: the run's result and the
// setup it ran with.
type benchReport struct {
	*bench.Result
	Protocol    string   `json:"protocol"`
	Conns       int      `json:"conns"`
	Target      string   `json:"target"`
	Endpoints   []string `json:"endpoints"`
	Consistency string   `json:"consistency,omitempty"`
	KeySize     int      `json:"key_size"`
	ValueSize   int      `json:"value_size"`
	Keyspace    int      `json:"keyspace"`
	Prefixes    []string `json:"prefixes,omitempty"`
	PreloadS    float64  `json:"preload_s,omitempty"`
}

func (a *app) benchCommand() *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the throughput and latency of the cluster",
		Long: `Bench sends requests from --clients concurrent loops for --duration (or
until --total requests are answered, or Ctrl-C) and reports the throughput,
the errors by code and the latency distribution.

Workloads (--workload):
  put     put a random key
  get     get a random key (--consistency l or s)
  mixed   get with probability --read-ratio, else put
  txn     get a random key, then compare-and-swap its value for a new one
  range   range over --range-limit keys from a random key (linearizable)

Keys are the numbers 0 to --keyspace-1, zero-padded to --key-size bytes;
values are --value-size bytes. --prefixes spreads the keys over key
ranges: key i is the prefix number i mod N (of the N given) followed by
its --key-size digits, so each prefix gets an equal share of the keys and
of the requests; a range stays under the prefix of its first key. Reads of keys never written count as misses:
use --preload to write every key first (not measured; a put that fails
with Unavailable or a timeout, as in a leader election, is tried again).

By default each loop sends its next request when the previous one is
answered (closed loop). With --rate R the loops send R requests per second
in all (open loop), and a request's latency counts from when it was due, so
that a server falling behind shows in the latencies instead of slowing the
load down; requests that came due but found every loop busy are reported
as dropped.

--target all spreads the loops over every --endpoints node; --target leader
asks the cluster for its leader and sends everything there. --conns sets
the number of independent HTTP clients (connection pools), shared
round-robin by the loops: with gRPC each holds one HTTP/2 connection per
node, with Connect (HTTP/1.1) a connection per request in flight.

Bench talks gRPC unless --protocol is given, and --timeout bounds each
request, not the whole run. Requests are not retried on another node.

A single line shows progress on standard error when it is a terminal. The
report goes to standard output; -o json prints it as one JSON line.`,
		Example: `  kvctl bench --workload put --clients 64 --duration 30s
  kvctl bench --workload get --consistency s --preload --clients 256
  kvctl bench --workload put --prefixes /a/,/b/ --clients 64
  kvctl bench --workload mixed --read-ratio 0.95 --rate 20000 --duration 1m
  kvctl --endpoints n1:7379,n2:7379,n3:7379 bench --target leader --total 100000 -o json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			return a.runBench(cmd, o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.workload, "workload", bench.WorkloadPut, "`workload`: "+strings.Join(bench.Workloads, ", "))
	f.StringVar(&o.consistency, "consistency", "l", "read `mode`: l (linearizable) or s (serializable)")
	f.Float64Var(&o.readRatio, "read-ratio", 0.9, "share of gets in the mixed workload, 0 to 1")
	f.Int64Var(&o.rangeLimit, "range-limit", 10, "keys read by each range")
	f.IntVar(&o.clients, "clients", 16, "concurrent request loops")
	f.IntVar(&o.conns, "conns", 1, "HTTP clients (connection pools) shared by the loops")
	f.IntVar(&o.keySize, "key-size", 16, "key size in bytes (the digits after the prefix, with --prefixes)")
	f.IntVar(&o.valueSize, "value-size", 256, "value size in bytes")
	f.IntVar(&o.keyspace, "keyspace", 100000, "number of distinct keys")
	f.StringSliceVar(&o.prefixes, "prefixes", nil, "spread the keys over these key `prefixes` (comma list), equally")
	f.Int64Var(&o.total, "total", 0, "stop after `N` requests (0: no limit; alone, it lifts the default duration)")
	f.DurationVar(&o.duration, "duration", 10*time.Second, "stop after this long (0: no limit)")
	f.Float64Var(&o.rate, "rate", 0, "requests per `second` in all, open loop (0: closed loop)")
	f.BoolVar(&o.preload, "preload", false, "write every key of the keyspace first (not measured)")
	f.StringVar(&o.target, "target", "all", "where requests go: all (every endpoint, round-robin) or leader")
	f.Uint64Var(&o.seed, "seed", 0, "seed of the key choice (0: random)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the load generator (the measured run only) to `file`")
	return cmd
}

func (a *app) runBench(cmd *cobra.Command, o benchOptions) error {
	flags := cmd.Flags()
	if flags.Changed("total") && !flags.Changed("duration") {
		o.duration = 0
	}
	switch {
	case o.total < 0:
		return usagef("invalid --total %d: must not be negative", o.total)
	case o.duration < 0:
		return usagef("invalid --duration %v: must not be negative", o.duration)
	case o.total == 0 && o.duration == 0:
		return usagef("set --total or --duration: a run needs a bound")
	case o.clients < 1:
		return usagef("invalid --clients %d: need at least 1", o.clients)
	case o.conns < 1:
		return usagef("invalid --conns %d: need at least 1", o.conns)
	case o.rate < 0:
		return usagef("invalid --rate %v: must not be negative", o.rate)
	case o.readRatio < 0 || o.readRatio > 1:
		return usagef("invalid --read-ratio %v: want 0 to 1", o.readRatio)
	case o.rangeLimit < 1:
		return usagef("invalid --range-limit %d: need at least 1", o.rangeLimit)
	case o.keySize < 1 || o.valueSize < 0 || o.keyspace < 1:
		return usagef("invalid sizes: --key-size and --keyspace must be positive, --value-size not negative")
	}
	if !isWorkload(o.workload) {
		return usagef("invalid --workload %q: want one of %s", o.workload, strings.Join(bench.Workloads, ", "))
	}
	var serializable bool
	switch o.consistency {
	case "l":
	case "s":
		serializable = true
	default:
		return usagef("invalid --consistency %q: want l or s", o.consistency)
	}
	if o.target != "all" && o.target != "leader" {
		return usagef("invalid --target %q: want all or leader", o.target)
	}
	protocol := a.protocol
	if !flags.Changed("protocol") {
		protocol = client.ProtocolGRPC
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	cfg := bench.Config{
		Workload:       o.workload,
		Clients:        o.clients,
		Total:          o.total,
		Duration:       o.duration,
		Rate:           o.rate,
		KeySize:        o.keySize,
		ValueSize:      o.valueSize,
		Keyspace:       o.keyspace,
		ReadRatio:      o.readRatio,
		Serializable:   serializable,
		RangeLimit:     o.rangeLimit,
		RequestTimeout: a.timeout,
		Seed:           o.seed,
		Prefixes:       o.prefixes,
	}
	if n := len(fmt.Sprint(o.keyspace - 1)); n > o.keySize {
		return usagef("invalid --key-size %d: %d keys need %d bytes", o.keySize, o.keyspace, n)
	}
	seen := map[string]bool{}
	for _, p := range o.prefixes {
		if p == "" || seen[p] {
			return usagef("invalid --prefixes %q: each must be non-empty and given once", strings.Join(o.prefixes, ","))
		}
		seen[p] = true
	}

	ctx := cmd.Context()
	endpoints := strings.FieldsFunc(a.endpoints, func(r rune) bool { return r == ',' })
	if len(endpoints) == 0 {
		return usagef("no --endpoints")
	}
	if o.target == "leader" {
		leader, err := a.findLeader(ctx, endpoints, protocol)
		if err != nil {
			return err
		}
		endpoints = []string{leader}
	}
	tlsCfg, err := a.tlsConfig()
	if err != nil {
		return err
	}
	token, err := a.benchToken(ctx, endpoints)
	if err != nil {
		return err
	}
	targets, closeIdle, err := bench.DialKVStore(endpoints, bench.DialOptions{
		Protocol: protocol, Conns: o.conns, MaxIdlePerHost: o.clients, TLS: tlsCfg, Token: token,
	})
	if err != nil {
		return usageError{err}
	}
	defer closeIdle()

	live := isTerminal(a.stderr)
	rep := benchReport{
		Protocol: protocol, Conns: o.conns, Target: o.target, Endpoints: endpoints,
		KeySize: o.keySize, ValueSize: o.valueSize, Keyspace: o.keyspace, Prefixes: o.prefixes,
	}
	if o.workload != bench.WorkloadPut && o.workload != bench.WorkloadRange {
		rep.Consistency = o.consistency
	}
	if o.preload {
		if live {
			fmt.Fprintf(a.stderr, "preloading %d keys...", o.keyspace)
		}
		start := time.Now()
		err := bench.Preload(ctx, cfg, targets, max(o.clients, 256))
		rep.PreloadS = time.Since(start).Seconds()
		if live {
			fmt.Fprint(a.stderr, "\r\x1b[K")
		}
		if err != nil {
			return err
		}
	}
	if live {
		cfg.Progress = func(p bench.Progress) {
			fmt.Fprintf(a.stderr, "\r\x1b[K%6.1fs  %d ops  %.0f ops/s  %d errors",
				p.Elapsed.Seconds(), p.Ops, float64(p.Ops)/p.Elapsed.Seconds(), p.Errors)
		}
	}
	stopProfile, err := startCPUProfile(o.cpuProfile)
	if err != nil {
		return err
	}
	res, err := bench.Run(ctx, cfg, targets)
	if perr := stopProfile(); perr != nil && err == nil {
		err = perr
	}
	if live {
		fmt.Fprint(a.stderr, "\r\x1b[K")
	}
	if err != nil {
		return usageError{err}
	}
	rep.Result = res

	if a.json() {
		b, err := json.Marshal(rep)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		err = a.write(append(b, '\n'))
		if err != nil {
			return err
		}
	} else if err := a.writeBenchText(rep); err != nil {
		return err
	}
	if res.Ops == 0 && res.ErrorCount() > 0 {
		return errors.New("bench: every request failed")
	}
	return nil
}

func (a *app) writeBenchText(rep benchReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Target:      %s over %s (%s, %d conns)\n", rep.Target, strings.Join(rep.Endpoints, ","), rep.Protocol, rep.Conns)
	fmt.Fprintf(&b, "Data:        %d keys of %d bytes, values of %d bytes", rep.Keyspace, rep.KeySize, rep.ValueSize)
	if len(rep.Prefixes) > 0 {
		fmt.Fprintf(&b, ", under prefixes %s", strings.Join(rep.Prefixes, ","))
	}
	if rep.Consistency != "" {
		fmt.Fprintf(&b, ", consistency %s", rep.Consistency)
	}
	b.WriteByte('\n')
	if rep.PreloadS > 0 {
		fmt.Fprintf(&b, "Preload:     %d keys in %.1fs (not measured)\n", rep.Keyspace, rep.PreloadS)
	}
	if err := bench.WriteReport(&b, rep.Result); err != nil {
		return err
	}
	return a.write([]byte(b.String()))
}

// benchToken authenticates as --user, once, for a run: "" without --user
// or while authentication is off.
func (a *app) benchToken(ctx context.Context, endpoints []string) (string, error) {
	name, pw, err := a.userPassword()
	if err != nil || name == "" {
		return "", err
	}
	c, err := client.New(endpoints)
	if err != nil {
		return "", usageError{err}
	}
	defer c.Close()
	resp, err := c.Auth.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: name, Password: pw}))
	if connect.CodeOf(err) == connect.CodeFailedPrecondition {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("authenticate as %q: %w", name, err)
	}
	return resp.Msg.GetToken(), nil
}

// findLeader returns the address of the leader, as a node in endpoints
// knows it.
func (a *app) findLeader(ctx context.Context, endpoints []string, protocol string) (string, error) {
	opts, err := a.clientOptions()
	if err != nil {
		return "", err
	}
	c, err := client.New(endpoints, append(opts, client.WithProtocol(protocol))...)
	if err != nil {
		return "", usageError{err}
	}
	defer c.Close()
	if a.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	resp, err := c.Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		return "", fmt.Errorf("find the leader: %w", err)
	}
	leader := resp.Msg.GetLeaderAddress()
	if leader == "" {
		return "", errors.New("find the leader: the cluster has no leader")
	}
	return leader, nil
}

func isWorkload(w string) bool {
	for _, x := range bench.Workloads {
		if w == x {
			return true
		}
	}
	return false
}

// isTerminal reports whether w is a terminal, for the progress line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// startCPUProfile profiles this process into path until the returned
// function is called; with no path it does nothing. The load generator
// shares the machine with the servers, so its cost is part of what a
// benchmark on one machine measures.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		return nil
	}, nil
}
