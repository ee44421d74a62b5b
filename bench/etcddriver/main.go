// Command etcddriver runs kvstore's load generator
// (github.com/kvstore/kvstore/api/client/bench) against an etcd cluster, so
// that etcd and kvd are measured by the same code with the same settings.
// Its flags and its output (text, or -o json as one line) follow
// `kvctl bench`.
//
//	etcddriver --endpoints 127.0.0.1:2379,127.0.0.1:22379 --workload get --consistency s --clients 256 --duration 10s -o json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/api/client/bench"
)

// Etcd is the bench.Target of an etcd client. A client made with one
// endpoint sends everything to that member (no failover), like
// bench.KVStore does for kvd.
type Etcd struct {
	c *clientv3.Client
}

// Put implements bench.Target.
func (e *Etcd) Put(ctx context.Context, key, value []byte) error {
	_, err := e.c.Put(ctx, string(key), string(value))
	return err
}

// Get implements bench.Target. Serializable reads are served by the member
// asked from its local state; linearizable ones go through a read index.
func (e *Etcd) Get(ctx context.Context, key []byte, serializable bool) ([]byte, error) {
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	resp, err := e.c.Get(ctx, string(key), opts...)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, bench.ErrNotFound
	}
	v := resp.Kvs[0].Value
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// CAS implements bench.Target with a Txn: compare the value (or, for a nil
// old, create revision 0: the key does not exist), then put.
func (e *Etcd) CAS(ctx context.Context, key, old, new []byte) (bool, error) {
	k := string(key)
	var cmp clientv3.Cmp
	if old == nil {
		cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	} else {
		cmp = clientv3.Compare(clientv3.Value(k), "=", string(old))
	}
	resp, err := e.c.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, string(new))).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// Range implements bench.Target, with linearizable reads. An end of "\x00"
// means every key from start on, in etcd as in kvstore.
func (e *Etcd) Range(ctx context.Context, start, end []byte, limit int64) error {
	_, err := e.c.Get(ctx, string(start), clientv3.WithRange(string(end)), clientv3.WithLimit(limit))
	return err
}

// errorCode names an error by its gRPC code, spelled as bench.ConnectCode
// spells it ("unavailable", "deadline_exceeded"): the numbers are the same.
func errorCode(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.CodeDeadlineExceeded.String()
	}
	return connect.Code(status.Code(err)).String()
}

// report is the JSON output, shaped like kvctl bench's.
type report struct {
	*bench.Result
	Protocol    string   `json:"protocol"`
	Conns       int      `json:"conns"`
	Target      string   `json:"target"`
	Endpoints   []string `json:"endpoints"`
	Consistency string   `json:"consistency,omitempty"`
	KeySize     int      `json:"key_size"`
	ValueSize   int      `json:"value_size"`
	Keyspace    int      `json:"keyspace"`
	PreloadS    float64  `json:"preload_s,omitempty"`
	System      string   `json:"system"`
}

// findLeader returns the endpoint of the member that says it leads, as
// kvctl bench --target leader does.
func findLeader(endpoints []string) (string, error) {
	for _, ep := range endpoints {
		u, err := client.EndpointURL(ep)
		if err != nil {
			return "", fmt.Errorf("endpoint %q: %w", ep, err)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, DialTimeout: 5 * time.Second})
		if err != nil {
			return "", fmt.Errorf("connect to %s: %w", ep, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := c.Status(ctx, u)
		cancel()
		c.Close()
		if err != nil {
			return "", fmt.Errorf("status of %s: %w", ep, err)
		}
		if st.Leader != 0 && st.Leader == st.Header.GetMemberId() {
			return ep, nil
		}
	}
	return "", errors.New("no endpoint is the leader")
}

// memberID returns the ID of the member serving endpoint ep.
func memberID(ctx context.Context, ep string) (uint64, error) {
	u, err := client.EndpointURL(ep)
	if err != nil {
		return 0, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, DialTimeout: 5 * time.Second})
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", ep, err)
	}
	defer c.Close()
	st, err := c.Status(ctx, u)
	if err != nil {
		return 0, fmt.Errorf("status of %s: %w", ep, err)
	}
	return st.Header.GetMemberId(), nil
}

// moveLeader makes the member serving to the leader, as kvctl leader
// transfer does for kvd: compare.sh puts both systems' leaders on the same
// node, so that a run sending everything to one endpoint meets a follower
// (or the leader) in both. It returns once that member says it leads.
func moveLeader(ctx context.Context, endpoints []string, to string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id, err := memberID(ctx, to)
	if err != nil {
		return err
	}
	leader, err := findLeader(endpoints)
	if err != nil {
		return err
	}
	if leader != to {
		u, err := client.EndpointURL(leader)
		if err != nil {
			return fmt.Errorf("endpoint %q: %w", leader, err)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{u}, DialTimeout: 5 * time.Second})
		if err != nil {
			return fmt.Errorf("connect to %s: %w", leader, err)
		}
		_, err = c.MoveLeader(ctx, id)
		c.Close()
		if err != nil {
			return fmt.Errorf("move leader from %s to %s: %w", leader, to, err)
		}
	}
	for {
		if l, err := findLeader(endpoints); err == nil && l == to {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become the leader: %w", to, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcddriver:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("etcddriver", flag.ContinueOnError)
	endpointsFlag := fs.String("endpoints", "127.0.0.1:2379", "comma-separated etcd client `endpoints` (host:port or URL)")
	output := fs.String("o", "text", "output `format`: text or json")
	fs.StringVar(output, "output", "text", "output `format`: text or json")
	timeout := fs.Duration("timeout", 5*time.Second, "time limit for each request, 0 for none")
	workload := fs.String("workload", bench.WorkloadPut, "`workload`: "+strings.Join(bench.Workloads, ", "))
	consistency := fs.String("consistency", "l", "read `mode`: l (linearizable) or s (serializable)")
	readRatio := fs.Float64("read-ratio", 0.9, "share of gets in the mixed workload, 0 to 1")
	rangeLimit := fs.Int64("range-limit", 10, "keys read by each range")
	clients := fs.Int("clients", 16, "concurrent request loops")
	conns := fs.Int("conns", 1, "etcd clients (gRPC connections) per endpoint, shared round-robin by the loops")
	keySize := fs.Int("key-size", 16, "key size in bytes")
	valueSize := fs.Int("value-size", 256, "value size in bytes")
	keyspace := fs.Int("keyspace", 100000, "number of distinct keys")
	total := fs.Int64("total", 0, "stop after `N` requests (0: no limit; alone, it lifts the default duration)")
	duration := fs.Duration("duration", 10*time.Second, "stop after this long (0: no limit)")
	rate := fs.Float64("rate", 0, "requests per `second` in all, open loop (0: closed loop)")
	preload := fs.Bool("preload", false, "write every key of the keyspace first (not measured)")
	preloadOnly := fs.Bool("preload-only", false, "only preload the keyspace, then exit (no run)")
	seed := fs.Uint64("seed", 0, "seed of the key choice (0: random)")
	target := fs.String("target", "all", "`target`: all (spread the loops over every endpoint) or leader (send everything to the leader)")
	moveTo := fs.String("move-leader-to", "", "make the member serving this `endpoint` the leader, then exit (no run)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["total"] && !set["duration"] {
		*duration = 0
	}
	if *clients < 1 || *conns < 1 {
		return errors.New("--clients and --conns need at least 1")
	}
	var serializable bool
	switch *consistency {
	case "l":
	case "s":
		serializable = true
	default:
		return fmt.Errorf("invalid --consistency %q: want l or s", *consistency)
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("invalid -o %q: want text or json", *output)
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	endpoints := strings.FieldsFunc(*endpointsFlag, func(r rune) bool { return r == ',' })
	if len(endpoints) == 0 {
		return errors.New("no --endpoints")
	}
	if *moveTo != "" {
		if err := moveLeader(context.Background(), endpoints, *moveTo); err != nil {
			return err
		}
		fmt.Printf("leader: %s\n", *moveTo)
		return nil
	}
	switch *target {
	case "all":
	case "leader":
		leader, err := findLeader(endpoints)
		if err != nil {
			return err
		}
		endpoints = []string{leader}
	default:
		return fmt.Errorf("invalid --target %q: want all or leader", *target)
	}

	cfg := bench.Config{
		Workload:       *workload,
		Clients:        *clients,
		Total:          *total,
		Duration:       *duration,
		Rate:           *rate,
		KeySize:        *keySize,
		ValueSize:      *valueSize,
		Keyspace:       *keyspace,
		ReadRatio:      *readRatio,
		Serializable:   serializable,
		RangeLimit:     *rangeLimit,
		RequestTimeout: *timeout,
		ErrorCode:      errorCode,
		Seed:           *seed,
	}

	// One client per endpoint and conn, ordered like bench.DialKVStore's
	// targets: round-robin spreads the loops over the endpoints first.
	var targets []bench.Target
	var cs []*clientv3.Client
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range *conns {
		for _, ep := range endpoints {
			u, err := client.EndpointURL(ep)
			if err != nil {
				return fmt.Errorf("endpoint %q: %w", ep, err)
			}
			c, err := clientv3.New(clientv3.Config{
				Endpoints:          []string{u},
				DialTimeout:        5 * time.Second,
				MaxCallSendMsgSize: 8 << 20,
				MaxCallRecvMsgSize: 64 << 20,
			})
			if err != nil {
				return fmt.Errorf("connect to %s: %w", ep, err)
			}
			cs = append(cs, c)
			targets = append(targets, &Etcd{c: c})
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	rep := report{
		Protocol: "grpc", Conns: *conns, Target: *target, Endpoints: endpoints,
		KeySize: *keySize, ValueSize: *valueSize, Keyspace: *keyspace, System: "etcd",
	}
	if *workload != bench.WorkloadPut && *workload != bench.WorkloadRange {
		rep.Consistency = *consistency
	}
	if *preload || *preloadOnly {
		start := time.Now()
		err := bench.Preload(ctx, cfg, targets, max(*clients, 256))
		rep.PreloadS = time.Since(start).Seconds()
		if err != nil {
			return err
		}
		if *preloadOnly {
			fmt.Printf("preloaded %d keys in %.1fs\n", *keyspace, rep.PreloadS)
			return nil
		}
	}
	res, err := bench.Run(ctx, cfg, targets)
	if err != nil {
		return err
	}
	rep.Result = res
	if *output == "json" {
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
	} else {
		var b strings.Builder
		fmt.Fprintf(&b, "Target:      %s over %s (%s, %d conns)\n", rep.Target, strings.Join(rep.Endpoints, ","), rep.Protocol, rep.Conns)
		fmt.Fprintf(&b, "Data:        %d keys of %d bytes, values of %d bytes", rep.Keyspace, rep.KeySize, rep.ValueSize)
		if rep.Consistency != "" {
			fmt.Fprintf(&b, ", consistency %s", rep.Consistency)
		}
		b.WriteByte('\n')
		if rep.PreloadS > 0 {
			fmt.Fprintf(&b, "Preload:     %d keys in %.1fs (not measured)\n", rep.Keyspace, rep.PreloadS)
		}
		if err := bench.WriteReport(&b, res); err != nil {
			return err
		}
		fmt.Print(b.String())
	}
	if res.Ops == 0 && res.ErrorCount() > 0 {
		return errors.New("every request failed")
	}
	return nil
}
