package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// label marks every container, volume and network the suite makes; its
// value is the run's id. Cleanup removes by it, and nothing else.
const label = "kvstore.chaos"

// nodeUID is the numeric user the image runs as.
const nodeUID = 65532

// cluster is a kvstore cluster of containers on a bridge network of its own.
type cluster struct {
	t     testing.TB
	cli   *client.Client
	run   string // the run's id, in every name
	image string
	net   string // network name
	nodes []*cnode
	http  *http.Client
	// group is the data group of a run over two groups (--groups 2),
	// nil before it is created and in a run over one.
	group *dataGroup
}

// cnode is one container. Its address and pid change when it restarts.
type cnode struct {
	c    *cluster
	name string // n1.., also the kvd node id
	id   string // container id
	// tmpfs, if set, is the host directory (a tmpfs of limited size that
	// the suite mounted) bind-mounted as the node's /data.
	tmpfs string

	mu   sync.Mutex
	addr string // ip:7379
	pid  int
	kv   kvstorev1connect.KVServiceClient
	cl   kvstorev1connect.ClusterServiceClient
}

// newCluster starts n nodes from image on a new bridge network; the nodes
// named in tmpfsNodes keep their data on a tmpfs of tmpfsSize bytes that
// the host can fill. Everything is removed at the end of the test, also
// when it fails.
func newCluster(t testing.TB, ctx context.Context, image string, n int, tmpfsNodes []string, tmpfsSize int64) *cluster {
	t.Helper()
	for _, tool := range []string{"nsenter", "iptables", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the suite needs %s on the host: %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("the suite enters the containers' network namespaces and mounts tmpfs: run it as root")
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cli.ImageInspectWithRaw(ctx, image); err != nil {
		t.Fatalf("image %s: %v (build it with deploy/build-image.sh)", image, err)
	}
	var b [4]byte
	rand.Read(b[:])
	c := &cluster{
		t: t, cli: cli, run: hex.EncodeToString(b[:]), image: image,
		http: &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 16,
		}},
	}
	c.net = "kvchaos-" + c.run
	t.Cleanup(c.cleanup)
	labels := map[string]string{label: c.run}
	if _, err := cli.NetworkCreate(ctx, c.net, network.CreateOptions{Driver: "bridge", Labels: labels}); err != nil {
		t.Fatalf("create network: %v", err)
	}
	for i := range n {
		nd := &cnode{c: c, name: fmt.Sprintf("n%d", i+1)}
		var m mount.Mount
		if slices.Contains(tmpfsNodes, nd.name) {
			nd.tmpfs = filepath.Join(os.TempDir(), "kvchaos-"+c.run+"-"+nd.name)
			if err := os.Mkdir(nd.tmpfs, 0o755); err != nil {
				t.Fatal(err)
			}
			opts := fmt.Sprintf("size=%d,uid=%d,gid=%d,mode=0755", tmpfsSize, nodeUID, nodeUID)
			if err := syscall.Mount("tmpfs", nd.tmpfs, "tmpfs", 0, opts); err != nil {
				t.Fatalf("mount a tmpfs for %s: %v", nd.name, err)
			}
			m = mount.Mount{Type: mount.TypeBind, Source: nd.tmpfs, Target: "/data"}
		} else {
			vol := "kvchaos-" + c.run + "-" + nd.name
			if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: labels}); err != nil {
				t.Fatalf("create volume: %v", err)
			}
			m = mount.Mount{Type: mount.TypeVolume, Source: vol, Target: "/data"}
		}
		resp, err := cli.ContainerCreate(ctx,
			&container.Config{
				Image:    image,
				Hostname: nd.name,
				// The compose file's command, with five expected.
				Cmd:    []string{"--name", nd.name, "--join", "kvd", "--bootstrap-expect", strconv.Itoa(n)},
				Labels: labels,
			},
			&container.HostConfig{Mounts: []mount.Mount{m}},
			&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
				c.net: {Aliases: []string{"kvd"}},
			}},
			nil, "kvchaos-"+c.run+"-"+nd.name)
		if err != nil {
			t.Fatalf("create container %s: %v", nd.name, err)
		}
		nd.id = resp.ID
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		if err := nd.start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// cleanup removes the run's containers, volumes and network, and unmounts
// its tmpfs directories. It logs the containers' last lines first if the
// test failed.
func (c *cluster) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if c.t.Failed() {
		for _, nd := range c.nodes {
			c.t.Logf("last log lines of %s:\n%s", nd.name, nd.logs(ctx, 40))
		}
	}
	byLabel := filters.NewArgs(filters.Arg("label", label+"="+c.run))
	cs, err := c.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: byLabel})
	if err != nil {
		c.t.Errorf("cleanup: list containers: %v", err)
	}
	for _, ct := range cs {
		if err := c.cli.ContainerRemove(ctx, ct.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			c.t.Errorf("cleanup: remove container %s: %v", ct.ID, err)
		}
	}
	vs, err := c.cli.VolumeList(ctx, volume.ListOptions{Filters: byLabel})
	if err != nil {
		c.t.Errorf("cleanup: list volumes: %v", err)
	} else {
		for _, v := range vs.Volumes {
			if err := c.cli.VolumeRemove(ctx, v.Name, true); err != nil {
				c.t.Errorf("cleanup: remove volume %s: %v", v.Name, err)
			}
		}
	}
	ns, err := c.cli.NetworkList(ctx, network.ListOptions{Filters: byLabel})
	if err != nil {
		c.t.Errorf("cleanup: list networks: %v", err)
	}
	for _, n := range ns {
		if err := c.cli.NetworkRemove(ctx, n.ID); err != nil {
			c.t.Errorf("cleanup: remove network %s: %v", n.Name, err)
		}
	}
	for _, nd := range c.nodes {
		if nd.tmpfs != "" {
			if err := syscall.Unmount(nd.tmpfs, syscall.MNT_DETACH); err != nil {
				c.t.Errorf("cleanup: unmount %s: %v", nd.tmpfs, err)
			}
			os.Remove(nd.tmpfs)
		}
	}
	c.cli.Close()
}

// node returns the node named name.
func (c *cluster) node(name string) *cnode {
	for _, nd := range c.nodes {
		if nd.name == name {
			return nd
		}
	}
	panic("no node " + name)
}

// start starts the container and learns its address and pid.
func (nd *cnode) start(ctx context.Context) error {
	if err := nd.c.cli.ContainerStart(ctx, nd.id, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", nd.name, err)
	}
	return nd.refresh(ctx)
}

// refresh reads the container's address and pid again.
func (nd *cnode) refresh(ctx context.Context) error {
	info, err := nd.c.cli.ContainerInspect(ctx, nd.id)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", nd.name, err)
	}
	ep := info.NetworkSettings.Networks[nd.c.net]
	if ep == nil || ep.IPAddress == "" || info.State.Pid == 0 {
		return fmt.Errorf("%s is not running on %s", nd.name, nd.c.net)
	}
	addr := net.JoinHostPort(ep.IPAddress, "7379")
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.pid = info.State.Pid
	if addr != nd.addr {
		nd.addr = addr
		nd.kv = kvstorev1connect.NewKVServiceClient(nd.c.http, "http://"+addr)
		nd.cl = kvstorev1connect.NewClusterServiceClient(nd.c.http, "http://"+addr)
	}
	return nil
}

func (nd *cnode) clients() (kvstorev1connect.KVServiceClient, kvstorev1connect.ClusterServiceClient) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.kv, nd.cl
}

func (nd *cnode) ip() string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	h, _, _ := net.SplitHostPort(nd.addr)
	return h
}

// kill sends SIGKILL and waits until the container has stopped.
func (nd *cnode) kill(ctx context.Context) error {
	if err := nd.c.cli.ContainerKill(ctx, nd.id, "KILL"); err != nil {
		return fmt.Errorf("kill %s: %w", nd.name, err)
	}
	return nd.waitExit(ctx)
}

func (nd *cnode) waitExit(ctx context.Context) error {
	ch, errc := nd.c.cli.ContainerWait(ctx, nd.id, container.WaitConditionNotRunning)
	select {
	case <-ch:
		return nil
	case err := <-errc:
		return fmt.Errorf("wait for %s to stop: %w", nd.name, err)
	}
}

// stop sends SIGTERM (a graceful leave) and waits up to 40 s.
func (nd *cnode) stop(ctx context.Context) error {
	timeout := 40
	if err := nd.c.cli.ContainerStop(ctx, nd.id, container.StopOptions{Timeout: &timeout}); err != nil {
		return fmt.Errorf("stop %s: %w", nd.name, err)
	}
	return nil
}

func (nd *cnode) pause(ctx context.Context) error   { return nd.c.cli.ContainerPause(ctx, nd.id) }
func (nd *cnode) unpause(ctx context.Context) error { return nd.c.cli.ContainerUnpause(ctx, nd.id) }

// running tells whether the container runs, and when it last started.
func (nd *cnode) running(ctx context.Context) (bool, string, error) {
	info, err := nd.c.cli.ContainerInspect(ctx, nd.id)
	if err != nil {
		return false, "", err
	}
	return info.State.Running, info.State.StartedAt, nil
}

func (nd *cnode) logs(ctx context.Context, tail int) string {
	rc, err := nd.c.cli.ContainerLogs(ctx, nd.id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	var b bytes.Buffer
	if _, err := stdcopy.StdCopy(&b, &b, rc); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(&b, "(%v)", err)
	}
	return b.String()
}

// netns runs a host command (iptables, tc) inside the container's network
// namespace: the image has no tools of its own.
func (nd *cnode) netns(ctx context.Context, args ...string) error {
	nd.mu.Lock()
	pid := nd.pid
	nd.mu.Unlock()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s in %s's namespace: %w: %s", strings.Join(args, " "), nd.name, err, out)
	}
	return nil
}

// dropFrom makes the node drop every packet from the given nodes.
func (nd *cnode) dropFrom(ctx context.Context, others ...*cnode) error {
	for _, o := range others {
		if err := nd.netns(ctx, "iptables", "-w", "-A", "INPUT", "-s", o.ip(), "-j", "DROP"); err != nil {
			return err
		}
	}
	return nil
}

// lossy makes the node drop a random share p of the packets it receives.
func (nd *cnode) lossy(ctx context.Context, p float64) error {
	return nd.netns(ctx, "iptables", "-w", "-A", "INPUT", "-m", "statistic", "--mode", "random",
		"--probability", strconv.FormatFloat(p, 'f', 3, 64), "-j", "DROP")
}

// slow rate-limits what the node sends with a token bucket: under load,
// packets queue, which delays them.
func (nd *cnode) slow(ctx context.Context, rate string) error {
	return nd.netns(ctx, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "16kb", "latency", "300ms")
}

// heal removes the suite's filter rules and qdisc from the node.
func (nd *cnode) heal(ctx context.Context) error {
	if err := nd.netns(ctx, "iptables", "-w", "-F", "INPUT"); err != nil {
		return err
	}
	// Deleting a root qdisc that is the default fails; that is fine.
	nd.netns(ctx, "tc", "qdisc", "del", "dev", "eth0", "root")
	return nil
}

// status asks the node for its view of the cluster.
func (nd *cnode) status(ctx context.Context) (*kvstorev1.StatusResponse, error) {
	_, cl := nd.clients()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cl.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// leader returns the node that a majority of the others names as leader,
// polling until ctx ends.
func (c *cluster) leader(ctx context.Context) (*cnode, error) {
	for {
		votes := map[string]int{}
		for _, nd := range c.nodes {
			if st, err := nd.status(ctx); err == nil && st.GetLeaderId() != "" {
				votes[st.GetLeaderId()]++
			}
		}
		for id, v := range votes {
			if v > len(c.nodes)/2 {
				return c.node(id), nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader agreed by a majority: %w (votes %v)", ctx.Err(), votes)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitHealthy waits until every node is running, answers, knows the same
// leader, and the leader has every node as a voter.
func (c *cluster) waitHealthy(ctx context.Context) error {
	var last error
	for {
		last = c.healthy(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy: %w (%v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *cluster) healthy(ctx context.Context) error {
	leader := ""
	for _, nd := range c.nodes {
		if err := nd.refresh(ctx); err != nil {
			return err
		}
		st, err := nd.status(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", nd.name, err)
		}
		if st.GetLeaderId() == "" || (leader != "" && st.GetLeaderId() != leader) {
			return fmt.Errorf("%s knows leader %q", nd.name, st.GetLeaderId())
		}
		leader = st.GetLeaderId()
	}
	_, cl := c.node(leader).clients()
	mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cl.Members(mctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
	if err != nil {
		return fmt.Errorf("members: %w", err)
	}
	voters := 0
	for _, m := range resp.Msg.GetMembers() {
		if m.GetSuffrage() == kvstorev1.Suffrage_SUFFRAGE_VOTER && m.GetGossipState() == "alive" {
			voters++
		}
	}
	if voters != len(c.nodes) || len(resp.Msg.GetMembers()) != len(c.nodes) {
		return fmt.Errorf("%d alive voters of %d members, want %d", voters, len(resp.Msg.GetMembers()), len(c.nodes))
	}
	if c.group != nil {
		if _, err := c.groupLeaderNow(ctx); err != nil {
			return err
		}
	}
	return nil
}

// transferLeadership makes to the leader, retrying until ctx ends.
func (c *cluster) transferLeadership(ctx context.Context, to *cnode) error {
	for {
		l, err := c.leader(ctx)
		if err != nil {
			return err
		}
		if l == to {
			return nil
		}
		_, cl := l.clients()
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = cl.TransferLeadership(tctx, connect.NewRequest(&kvstorev1.TransferLeadershipRequest{Id: to.name}))
		cancel()
		select {
		case <-ctx.Done():
			return fmt.Errorf("transfer leadership to %s: %w (last: %v)", to.name, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fill takes every free byte of the node's tmpfs with a file (in chunks,
// smaller and smaller, until none fits), and returns a function that frees
// it.
func (nd *cnode) fill() (free func() error, err error) {
	path := filepath.Join(nd.tmpfs, "chaos-filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var off int64
	for chunk := int64(1 << 20); chunk >= 4096; chunk /= 4 {
		for {
			err := syscall.Fallocate(int(f.Fd()), 0, off, chunk)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				os.Remove(path)
				return nil, fmt.Errorf("fill %s: %w", nd.tmpfs, err)
			}
			off += chunk
		}
	}
	return func() error { return os.Remove(path) }, nil
}

// crashLines returns the lines of the node's log that say why it died
// (Go's fatal error and signal lines, panics) and its last lines.
func (nd *cnode) crashLines(ctx context.Context) string {
	all := strings.Split(nd.logs(ctx, 5000), "\n")
	var out []string
	for _, l := range all {
		if strings.HasPrefix(l, "fatal error") || strings.HasPrefix(l, "panic") || strings.HasPrefix(l, "unexpected fault") ||
			strings.HasPrefix(l, "[signal") || strings.HasPrefix(l, "goroutine ") && strings.Contains(l, "running") {
			out = append(out, l)
		}
	}
	if len(out) > 12 {
		out = out[:12]
	}
	tail := all[max(0, len(all)-8):]
	return strings.Join(out, "\n") + "\n...\n" + strings.Join(tail, "\n")
}
