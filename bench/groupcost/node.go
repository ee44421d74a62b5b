package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	gometrics "github.com/hashicorp/go-metrics"
	gometricsprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// Copied from the node and consensus packages, whose own are unexported:
// they must follow those if they change.
const (
	// pushedCommitTimeout is consensus.pushedCommitTimeout: raft's
	// CommitTimeout on the node's transport, where the leader pushes
	// commit indexes itself.
	pushedCommitTimeout = 500 * time.Millisecond
	// leaderHeartbeatFactor is consensus.leaderHeartbeatFactor
	// (paceHeartbeats).
	leaderHeartbeatFactor = 2
	// raftLogCacheBytes is node.raftLogCacheBytes.
	raftLogCacheBytes = 16 << 20
)

// nopFSM applies nothing: groups at rest apply only raft's own entries.
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                       { return nil }
func (nopFSM) ApplyBatch(ls []*raft.Log) []any           { return make([]any, len(ls)) }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error)       { return nopSnapshot{}, nil }
func (nopFSM) Restore(rc io.ReadCloser) error            { return rc.Close() }
func (nopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (nopSnapshot) Release()                             {}

type nopSnapshot struct{}

// noPipeline is the node's transport as raft sees it: consensus's
// pushTransport refuses pipelines, so raft sends each append on its own.
// (At rest the pusher sends nothing: it pushes a commit index after an
// applied batch, and none comes.)
type noPipeline struct{ *raft.NetworkTransport }

func (noPipeline) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// raftConfig is consensus.NewReplica's raft configuration on a node's
// transport, with the node's defaults; timeout is the heartbeat and
// election timeout (consensus.DefaultRaftTimeout unless -raft-timeout).
func raftConfig(id string, timeout time.Duration, logger *slog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = consensus.NewHCLogger(logger, "raft", hclog.Info)
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	rc.CommitTimeout = pushedCommitTimeout
	rc.NoLegacyTelemetry = true
	rc.HeartbeatTimeout = timeout
	rc.ElectionTimeout = timeout
	rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	rc.SnapshotThreshold = node.DefaultSnapshotThreshold
	rc.SnapshotInterval = node.DefaultSnapshotInterval
	return rc
}

// installMetricsSink is node.goMetricsRegistry's: the go-metrics sink
// raft measures into in kvd, with the same blocked prefixes.
func installMetricsSink() error {
	sink, err := gometricsprom.NewPrometheusSinkFrom(gometricsprom.PrometheusOpts{Registerer: prometheus.NewRegistry()})
	if err != nil {
		return fmt.Errorf("metrics sink: %w", err)
	}
	cfg := gometrics.DefaultConfig("kvstore")
	cfg.EnableHostname = false
	cfg.EnableRuntimeMetrics = false
	cfg.EnableServiceLabel = false
	cfg.BlockedPrefixes = []string{"kvstore.raft.apply", "kvstore.raft.commitTime",
		"kvstore.raft.replication.heartbeat", "kvstore.raft.rpc.processHeartbeat"}
	_, err = gometrics.NewGlobal(cfg, sink)
	return err
}

// group is one raft group's replica on this node.
type group struct {
	r *raft.Raft
}

// nodeStats is what a node answers to "stats" on its stdin.
type nodeStats struct {
	CPUMicros  int64  `json:"cpu_us"`
	Changes    int64  `json:"state_changes"`
	Leading    int    `json:"leading"`
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heap_inuse"`
	Leaderless int    `json:"leaderless"`
}

// runNode is a child process: node idx (1-3) of every group, listening
// on 127.0.0.1:base+idx. It prints "ready" once every group has a leader
// (the preferred one with spread), then answers "stats" lines on stdin
// with a JSON line and "quiet" with "ok" (no more logs), and exits when
// stdin closes.
func runNode(idx, groups, base int, dir string, spread bool, timeout time.Duration, segSize int64, profDir string) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50) // as kvd does
	}
	// Errors only: raft warns of every election, and there are many at
	// start; "quiet" silences even errors before the parent stops the
	// nodes, one after the other.
	var level slog.LevelVar
	level.Set(slog.LevelError)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &level})).With("node", idx)
	if err := installMetricsSink(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addrOf(base, idx))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	dm := newDemux(ln, groups)
	go dm.serve()

	var servers []raft.Server
	for i := 1; i <= 3; i++ {
		servers = append(servers, raft.Server{ID: idOf(i), Address: raft.ServerAddress(addrOf(base, i)), Suffrage: raft.Voter})
	}
	var changes atomic.Int64
	gs := make([]*group, groups)
	for g := range groups {
		gdir := filepath.Join(dir, strconv.Itoa(g))
		store, err := raftlog.Open(filepath.Join(gdir, "raftlog"), raftlog.Options{SegmentSize: segSize, Logger: logger})
		if err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(gdir, 2, hclog.NewNullLogger())
		if err != nil {
			return fmt.Errorf("group %d: snapshots: %w", g, err)
		}
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:          &groupStream{groupListener: dm.groups[g], id: uint64(g)},
			MaxPool:         3,
			MaxRPCsInFlight: 1,
			Timeout:         10 * time.Second,
			Logger:          consensus.NewHCLogger(logger, "raft-net", hclog.Warn),
		})
		rc := raftConfig(string(idOf(idx)), timeout, logger.With("group", g))
		r, err := raft.NewRaft(rc, nopFSM{}, raftlog.NewCache(store, raftLogCacheBytes), store, snaps, noPipeline{trans})
		if err != nil {
			return fmt.Errorf("group %d: raft: %w", g, err)
		}
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("group %d: bootstrap: %w", g, err)
		}
		gs[g] = &group{r: r}
		go paceHeartbeats(r, rc.HeartbeatTimeout, rc.ElectionTimeout, &changes, logger)
	}

	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
		close(cmds)
	}()
	out := bufio.NewWriter(os.Stdout)
	if err := settle(gs, base, spread, cmds); err != nil {
		return err
	}
	fmt.Fprintln(out, "ready")
	out.Flush()
	for cmd := range cmds {
		if cmd == "quiet" {
			level.Set(slog.LevelError + 100)
			fmt.Fprintln(out, "ok")
			out.Flush()
			continue
		}
		if cmd != "stats" {
			return fmt.Errorf("unknown command %q", cmd)
		}
		if profDir != "" {
			// The window is from one "stats" to the next.
			if err := profile(profDir, idx, groups); err != nil {
				return err
			}
		}
		st := nodeStats{CPUMicros: cpuMicros(), Changes: changes.Load(), Goroutines: runtime.NumGoroutine()}
		for _, g := range gs {
			if g.r.State() == raft.Leader {
				st.Leading++
			}
			if _, id := g.r.LeaderWithID(); id == "" {
				st.Leaderless++
			}
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st.HeapInuse = ms.HeapInuse
		b, _ := json.Marshal(st)
		fmt.Fprintf(out, "%s\n", b)
		out.Flush()
	}
	// Stdin closed: the parent is done with this node. Raft's state is
	// in a temporary directory the parent removes, so nothing is shut
	// down in order.
	return nil
}

// profiling is the CPU profile being written, if any.
var profiling *os.File

// profile starts a CPU profile into profDir at the first call and, at
// the second, stops it and writes a heap profile.
func profile(profDir string, idx, groups int) error {
	name := filepath.Join(profDir, fmt.Sprintf("node%d-groups%d", idx, groups))
	if profiling == nil {
		f, err := os.Create(name + ".cpu.pprof")
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		profiling = f
		return pprof.StartCPUProfile(f)
	}
	pprof.StopCPUProfile()
	if err := profiling.Close(); err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	f, err := os.Create(name + ".heap.pprof")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// settle polls until every group has a leader, the preferred one
// (group g's is node g%3+1) when spread, handing leadership over where
// this node leads a group it should not. Stdin closing ends it.
func settle(gs []*group, base int, spread bool, cmds <-chan string) error {
	var mu sync.Mutex
	moving := map[int]bool{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		done := true
		for g, grp := range gs {
			_, lid := grp.r.LeaderWithID()
			want := idOf(g%3 + 1)
			switch {
			case lid == "":
				done = false
			case spread && lid != want:
				done = false
				mu.Lock()
				start := grp.r.State() == raft.Leader && !moving[g]
				if start {
					moving[g] = true
				}
				mu.Unlock()
				if start {
					go func() {
						// An error (a transfer under way, the target
						// not caught up) is retried at the next tick.
						_ = grp.r.LeadershipTransferToServer(want, raft.ServerAddress(addrOf(base, g%3+1))).Error()
						mu.Lock()
						delete(moving, g)
						mu.Unlock()
					}()
				}
			}
		}
		if done {
			return nil
		}
		select {
		case <-tick.C:
		case _, ok := <-cmds:
			if !ok {
				return errors.New("stdin closed before every group had a leader")
			}
		}
	}
}

// paceHeartbeats is consensus's (Replica.paceHeartbeats), which is
// unexported: while the node leads, its heartbeat timeout is
// leaderHeartbeatFactor times the configured one. It also counts the
// state changes it sees, so that elections during a window show.
func paceHeartbeats(r *raft.Raft, heartbeat, election time.Duration, changes *atomic.Int64, logger *slog.Logger) {
	states := make(chan raft.Observation, 1)
	obs := raft.NewObserver(states, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.RaftState)
		return ok
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)
	paced := false
	for {
		if lead := r.State() == raft.Leader; lead != paced {
			rc := r.ReloadableConfig()
			rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election
			if lead {
				rc.HeartbeatTimeout *= leaderHeartbeatFactor
				rc.ElectionTimeout = max(election, rc.HeartbeatTimeout)
			}
			if err := r.ReloadConfig(rc); err != nil {
				logger.Warn("raft: pace heartbeats", "leader", lead, "error", err)
			} else {
				paced = lead
			}
		}
		if _, ok := <-states; !ok {
			return
		}
		changes.Add(1)
	}
}

// cpuMicros is the CPU time this process used, user and system, from
// getrusage: microseconds, where /proc/PID/stat counts 10 ms ticks.
func cpuMicros() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano()/1000 + ru.Stime.Nano()/1000
}

func idOf(i int) raft.ServerID { return raft.ServerID("n" + strconv.Itoa(i)) }

func addrOf(base, i int) string { return "127.0.0.1:" + strconv.Itoa(base+i) }
