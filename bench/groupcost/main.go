// Command groupcost measures what an idle raft group costs a node (issue
// 37): CPU and memory per group per node, with N groups replicated on
// three nodes at rest.
//
// Each node is a process of its own (this program run again with -node),
// listening on one port of 127.0.0.1 that its groups share: a dialer
// writes the group id first and a demux hands the connection to that
// group's stream layer (demux.go). Every node hosts a replica of every
// group: one hashicorp/raft instance with its own raft log directory
// (storage/raftlog with its cache, as a node opens it, but with segments
// of -segment-size, 1 MiB, not 64 MiB, to spare the disk), its own
// NetworkTransport, a state machine that applies nothing, and raft
// configured as consensus.NewReplica configures it on a node (node.go).
// All groups are bootstrapped on the three nodes; once every group has a
// leader (spread: group g's leader is node g%3+1), the nodes rest for
// -settle, then for -window, at whose start and end each node reports the
// CPU time it used (getrusage); after it, its RSS (/proc/PID/status), Go
// heap in use, goroutines and open files. One line of text and one of JSON per N, then
// a table with the costs per group against the first N.
//
//	go run ./bench/groupcost -groups 1,8,32,64,128 -window 20s
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kvstore/kvstore/consensus"
)

func main() {
	nodeIdx := flag.Int("node", 0, "node index 1-3 (internal: a child process)")
	n := flag.Int("n", 0, "groups on this node (internal)")
	dir := flag.String("dir", "", "data dir (internal)")
	base := flag.Int("port", 7980, "the nodes listen on 127.0.0.1 at port+1 to port+3")
	groupsFlag := flag.String("groups", "1,8,32,64,128", "comma list of group counts, one run each")
	window := flag.Duration("window", 20*time.Second, "measured window at rest")
	settleFor := flag.Duration("settle", 5*time.Second, "rest before the window, once every group has its leader")
	spread := flag.Bool("spread", true, "move group g's leader to node g%3+1 before measuring")
	maxLoad := flag.Float64("maxload", float64(2*runtime.NumCPU()), "1-minute load average above which a run is repeated once")
	timeout := flag.Duration("raft-timeout", consensus.DefaultRaftTimeout, "raft's heartbeat and election timeout (a leader heartbeats a fifth of it apart)")
	segSize := flag.Int64("segment-size", 1<<20, "raft log segment size; kvd's is raftlog.DefaultSegmentSize (64 MiB), preallocated per log, which at 128 groups would take 24 GiB of disk here")
	profDir := flag.String("profile", "", "directory for each node's CPU profile of the window and heap profile after it (the profiler's own cost is in that run's figures)")
	readyTimeout := flag.Duration("ready-timeout", 90*time.Second, "how long the groups may take to elect their leaders")
	flag.Parse()
	if *nodeIdx != 0 {
		if err := runNode(*nodeIdx, *n, *base, *dir, *spread, *timeout, *segSize, *profDir); err != nil {
			fmt.Fprintf(os.Stderr, "groupcost node %d: %v\n", *nodeIdx, err)
			os.Exit(1)
		}
		return
	}
	var counts []int
	for _, s := range strings.Split(*groupsFlag, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			fatal(fmt.Errorf("-groups: %q is not a positive count", s))
		}
		counts = append(counts, c)
	}
	p := parent{base: *base, window: *window, settle: *settleFor, spread: *spread, timeout: *timeout, segSize: *segSize, profDir: *profDir, readyTimeout: *readyTimeout}
	fmt.Printf("groupcost: 3 nodes on 127.0.0.1, groups %v, window %v after %v at rest, spread leaders %v, raft timeout %v, %d CPUs\n",
		counts, *window, *settleFor, *spread, *timeout, runtime.NumCPU())
	var kept []result
	for _, c := range counts {
		r, err := p.run(c)
		if err != nil {
			fatal(err)
		}
		r.print()
		if max(r.Load1Before, r.Load1After) > *maxLoad {
			fmt.Printf("  load average above %.1f: once more\n", *maxLoad)
			r2, err := p.run(c)
			if err != nil {
				fatal(err)
			}
			r2.Repeat = 1
			r2.print()
			if max(r2.Load1Before, r2.Load1After) < max(r.Load1Before, r.Load1After) {
				r = r2
			}
		}
		kept = append(kept, r)
	}
	table(kept)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "groupcost:", err)
	os.Exit(1)
}

type parent struct {
	base           int
	window, settle time.Duration
	spread         bool
	timeout        time.Duration
	segSize        int64
	profDir        string
	readyTimeout   time.Duration
}

// nodeResult is one node's figures over a window.
type nodeResult struct {
	CPUPct     float64 `json:"cpu_pct"`
	RSSMiB     float64 `json:"rss_mib"`
	HeapMiB    float64 `json:"heap_inuse_mib"`
	Goroutines int     `json:"goroutines"`
	FDs        int     `json:"fds"`
	Leading    int     `json:"leading"`
	Changes    int64   `json:"state_changes_in_window"`
	Leaderless int     `json:"leaderless_after"`
}

// result is one run: N groups on the three nodes.
type result struct {
	Bench       string       `json:"bench"`
	Time        string       `json:"time"`
	Groups      int          `json:"groups"`
	RaftTimeout string       `json:"raft_timeout"`
	WindowS     float64      `json:"window_s"`
	ReadyS      float64      `json:"ready_s"`
	Load1Before float64      `json:"load1_before"`
	Load1After  float64      `json:"load1_after"`
	Repeat      int          `json:"repeat"`
	Nodes       []nodeResult `json:"nodes"`
	CPUMean     float64      `json:"cpu_pct_mean"`
	CPUMax      float64      `json:"cpu_pct_max"`
	RSSMean     float64      `json:"rss_mib_mean"`
	RSSMax      float64      `json:"rss_mib_max"`
	HeapMean    float64      `json:"heap_inuse_mib_mean"`
}

// child is a node process and its stdin and stdout.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func (c *child) stats() (nodeStats, error) {
	var st nodeStats
	if _, err := io.WriteString(c.in, "stats\n"); err != nil {
		return st, err
	}
	if !c.out.Scan() {
		return st, fmt.Errorf("node %d: no stats: %v", c.cmd.Process.Pid, c.out.Err())
	}
	err := json.Unmarshal(c.out.Bytes(), &st)
	return st, err
}

// run starts three nodes with groups groups, waits for their leaders,
// rests and measures.
func (p parent) run(groups int) (res result, err error) {
	res = result{Bench: "groupcost", Groups: groups, RaftTimeout: p.timeout.String(), Time: time.Now().UTC().Format(time.RFC3339)}
	res.Load1Before = load1()
	tmp, err := os.MkdirTemp("", "groupcost")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	var kids []*child
	defer func() {
		for _, k := range kids {
			// The first to exit would make the others log failed
			// heartbeats.
			if _, err := io.WriteString(k.in, "quiet\n"); err == nil {
				k.out.Scan()
			}
		}
		for _, k := range kids {
			k.in.Close()
			done := make(chan struct{})
			go func() { k.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				k.cmd.Process.Kill()
				<-done
			}
		}
	}()
	start := time.Now()
	for i := 1; i <= 3; i++ {
		cmd := exec.Command(self, "-node", strconv.Itoa(i), "-n", strconv.Itoa(groups), "-port", strconv.Itoa(p.base),
			"-dir", filepath.Join(tmp, strconv.Itoa(i)), "-spread="+strconv.FormatBool(p.spread), "-raft-timeout", p.timeout.String(),
			"-segment-size", strconv.FormatInt(p.segSize, 10), "-profile", p.profDir)
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return res, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return res, err
		}
		if err := cmd.Start(); err != nil {
			return res, fmt.Errorf("start node %d: %w", i, err)
		}
		kids = append(kids, &child{cmd: cmd, in: in, out: bufio.NewScanner(out)})
	}
	// Every node says "ready" once each group has its leader; a node
	// that fails exits, which ends its stdout.
	ready := make(chan error, len(kids))
	for i, k := range kids {
		go func() {
			if k.out.Scan() && k.out.Text() == "ready" {
				ready <- nil
				return
			}
			ready <- fmt.Errorf("node %d exited before its groups had leaders", i+1)
		}()
	}
	deadline := time.After(p.readyTimeout)
	for range kids {
		select {
		case err := <-ready:
			if err != nil {
				return res, err
			}
		case <-deadline:
			return res, fmt.Errorf("%d groups: no leader for every group within %v", groups, p.readyTimeout)
		}
	}
	res.ReadyS = time.Since(start).Seconds()
	time.Sleep(p.settle)
	before := make([]nodeStats, len(kids))
	for i, k := range kids {
		if before[i], err = k.stats(); err != nil {
			return res, err
		}
	}
	t0 := time.Now()
	time.Sleep(p.window)
	el := time.Since(t0)
	res.WindowS = el.Seconds()
	for i, k := range kids {
		st, err := k.stats()
		if err != nil {
			return res, err
		}
		rss, err := vmRSS(k.cmd.Process.Pid)
		if err != nil {
			return res, err
		}
		// Open files: the groups' TCP connections, logs and listener.
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", k.cmd.Process.Pid))
		if err != nil {
			return res, err
		}
		res.Nodes = append(res.Nodes, nodeResult{
			CPUPct:     float64(st.CPUMicros-before[i].CPUMicros) / float64(el.Microseconds()) * 100,
			RSSMiB:     float64(rss) / (1 << 20),
			HeapMiB:    float64(st.HeapInuse) / (1 << 20),
			Goroutines: st.Goroutines,
			FDs:        len(fds),
			Leading:    st.Leading,
			Changes:    st.Changes - before[i].Changes,
			Leaderless: st.Leaderless,
		})
	}
	res.Load1After = load1()
	for _, nd := range res.Nodes {
		res.CPUMean += nd.CPUPct / float64(len(res.Nodes))
		res.CPUMax = max(res.CPUMax, nd.CPUPct)
		res.RSSMean += nd.RSSMiB / float64(len(res.Nodes))
		res.RSSMax = max(res.RSSMax, nd.RSSMiB)
		res.HeapMean += nd.HeapMiB / float64(len(res.Nodes))
	}
	return res, nil
}

func (r result) print() {
	var cpu, rss, gor, fds, lead, chg []string
	for _, n := range r.Nodes {
		cpu = append(cpu, fmt.Sprintf("%.2f", n.CPUPct))
		rss = append(rss, fmt.Sprintf("%.1f", n.RSSMiB))
		gor = append(gor, strconv.Itoa(n.Goroutines))
		fds = append(fds, strconv.Itoa(n.FDs))
		lead = append(lead, strconv.Itoa(n.Leading))
		chg = append(chg, strconv.FormatInt(n.Changes, 10))
	}
	fmt.Printf("groups=%d: CPU %% of a core per node mean %.2f max %.2f (%s); RSS MiB mean %.1f (%s); heap in use MiB mean %.1f; "+
		"goroutines %s; open files %s; leaders %s; state changes in window %s; ready in %.1fs; load %.2f -> %.2f\n",
		r.Groups, r.CPUMean, r.CPUMax, strings.Join(cpu, " / "), r.RSSMean, strings.Join(rss, " / "), r.HeapMean,
		strings.Join(gor, " / "), strings.Join(fds, " / "), strings.Join(lead, " / "), strings.Join(chg, " / "), r.ReadyS, r.Load1Before, r.Load1After)
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

// table prints the kept runs with their cost per group against the first
// run (the fewest groups), and a least-squares slope over all of them.
func table(rs []result) {
	if len(rs) == 0 {
		return
	}
	slices.SortFunc(rs, func(a, b result) int { return a.Groups - b.Groups })
	b := rs[0]
	fmt.Printf("\n| groups | CPU %% of a core per node, mean / max | RSS MiB per node, mean / max | Go heap in use MiB, mean | goroutines per node | open files per node | load before / after | CPU %% per added group per node | KiB RSS per added group per node |\n")
	fmt.Printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rs {
		g, f := 0, 0
		for _, n := range r.Nodes {
			g += n.Goroutines
			f += n.FDs
		}
		dc, dr := "", ""
		if d := r.Groups - b.Groups; d > 0 {
			dc = fmt.Sprintf("%.3f", (r.CPUMean-b.CPUMean)/float64(d))
			dr = fmt.Sprintf("%.0f", (r.RSSMean-b.RSSMean)*1024/float64(d))
		}
		fmt.Printf("| %d | %.2f / %.2f | %.1f / %.1f | %.1f | %d | %d | %.2f / %.2f | %s | %s |\n",
			r.Groups, r.CPUMean, r.CPUMax, r.RSSMean, r.RSSMax, r.HeapMean, g/len(r.Nodes), f/len(r.Nodes), r.Load1Before, r.Load1After, dc, dr)
	}
	if len(rs) < 2 {
		return
	}
	var xs, cs, ms []float64
	for _, r := range rs {
		xs = append(xs, float64(r.Groups))
		cs = append(cs, r.CPUMean)
		ms = append(ms, r.RSSMean*1024)
	}
	fmt.Printf("\nleast-squares slope over all runs: %.3f %% of a core and %.0f KiB RSS per group per node\n", slope(xs, cs), slope(xs, ms))
}

func slope(xs, ys []float64) float64 {
	var mx, my float64
	for i := range xs {
		mx += xs[i] / float64(len(xs))
		my += ys[i] / float64(len(ys))
	}
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	return num / den
}

// load1 is the 1-minute load average, as uptime shows it.
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// vmRSS is the resident set of process pid in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
