package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// These tests put a data dir on a real small filesystem: a tmpfs the test
// mounts, so they need root (CI runs as root) and a kernel that lets the
// test mount.

// mountTmpfs mounts a tmpfs of sizeMiB at a new directory and unmounts it
// when the test ends (after the processes using it were killed: their
// cleanups run first).
func mountTmpfs(t *testing.T, sizeMiB int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the data dir needs root (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMiB), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// resizeTmpfs grows (or shrinks) a mounted tmpfs.
func resizeTmpfs(t *testing.T, dir string, sizeMiB int) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%dm", sizeMiB), dir).CombinedOutput(); err != nil {
		t.Fatalf("grow the tmpfs: %v: %s", err, out)
	}
}

const bigValue = 256 << 10

// fillUntilRefused puts 256 KiB values through c until a put is refused,
// and returns the values of the puts acknowledged, by key. The refusal
// must be RESOURCE_EXHAUSTED naming the data dir that is short.
func fillUntilRefused(t *testing.T, ctx context.Context, c kvstorev1connect.KVServiceClient, shortDir string) map[string][]byte {
	t.Helper()
	acked := map[string][]byte{}
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatalf("1000 puts of 256 KiB into a 64 MiB data dir, none refused")
		}
		k, v := fmt.Sprintf("big-%04d", i), make([]byte, bigValue)
		rand.Read(v)
		_, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(k), Value: v}))
		if err == nil {
			acked[k] = v
			continue
		}
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("put %d: %v, want resource_exhausted", i, err)
		}
		want := "no space: data dir " + shortDir + " has "
		if msg := err.Error(); !strings.Contains(msg, want) || !strings.Contains(msg, " margin") {
			t.Fatalf("put %d refused with %q, want the cause named (%q... margin)", i, msg, want)
		}
		t.Logf("put %d refused: %v", i, err)
		return acked
	}
}

// checkAcked reads every acknowledged put back from c.
func checkAcked(t *testing.T, ctx context.Context, c kvstorev1connect.KVServiceClient, acked map[string][]byte, where string) {
	t.Helper()
	for k, v := range acked {
		resp, err := c.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(k)}))
		if err != nil {
			t.Fatalf("get %s from %s: %v", k, where, err)
		}
		if !bytes.Equal(resp.Msg.GetKv().GetValue(), v) {
			t.Fatalf("get %s from %s: %d bytes, not the %d acknowledged", k, where, len(resp.Msg.GetKv().GetValue()), len(v))
		}
	}
}

// refusesPut checks that a put through c is refused for want of space in
// shortDir.
func refusesPut(t *testing.T, ctx context.Context, c kvstorev1connect.KVServiceClient, shortDir string) {
	t.Helper()
	_, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("one-more"), Value: []byte("x")}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(fmt.Sprint(err), "no space: data dir "+shortDir) {
		t.Fatalf("a put on a full disk: %v, want resource_exhausted naming %s", err, shortDir)
	}
}

// waitWrites polls puts through c until one is accepted.
func waitWrites(t *testing.T, ctx context.Context, c kvstorev1connect.KVServiceClient) {
	t.Helper()
	for {
		_, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("after"), Value: []byte("space came back")}))
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("writes did not resume once space came back: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readyz returns /readyz's status code and text.
func readyz(t *testing.T, ctx context.Context, addr string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// alive fails the test if the process has exited.
func alive(t *testing.T, p *proc, what string) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s exited: %v", what, err)
	default:
	}
}

// TestFullDiskOneNode fills a 64 MiB tmpfs holding a node's data dir with
// 256 KiB puts. Before, kvd died of SIGBUS inside Badger's memory-mapped
// files after a few dozen, and again at every restart. Now puts are
// refused with RESOURCE_EXHAUSTED naming the cause, reads and deletes go
// on, a node restarted on the full disk serves reads and refuses writes,
// and once a file placed there is deleted writes resume without a
// restart; every acknowledged put is there throughout.
func TestFullDiskOneNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	mnt := mountTmpfs(t, 64)
	// Another user of the filesystem, which the test deletes to give the
	// space back.
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "d")

	lp, err := launchKVD(t, ctx, dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, lp.addr)
	c := lp.client()
	acked := fillUntilRefused(t, ctx, c, dir)
	if len(acked) < 10 {
		t.Fatalf("only %d puts of 256 KiB acknowledged on a 64 MiB disk", len(acked))
	}
	alive(t, lp.proc, "kvd")
	checkAcked(t, ctx, c, acked, "the full node")
	refusesPut(t, ctx, c, dir)
	// Deletes need little: they go on.
	if _, err := c.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("big-0000")})); err != nil {
		t.Fatalf("a delete on a full disk: %v", err)
	}
	delete(acked, "big-0000")
	// Ready (it serves reads), and says why it refuses writes.
	if code, text := readyz(t, ctx, lp.addr); code != http.StatusOK || !strings.Contains(text, "alarm NOSPACE") ||
		!strings.Contains(text, "writes refused: no space: data dir "+dir) {
		t.Fatalf("/readyz on a full disk: %d %q", code, text)
	}
	cl := kvstorev1connect.NewClusterServiceClient(http.DefaultClient, "http://"+lp.addr)
	st, err := cl.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Msg; len(s.GetAlarms()) != 1 || s.GetAlarms()[0].GetAlarm() != kvstorev1.AlarmType_ALARM_TYPE_NOSPACE ||
		!strings.Contains(s.GetWritesRefused(), "no space: data dir "+dir) || s.GetDiskFreeBytes() >= s.GetDiskMarginBytes() {
		t.Fatalf("status on a full disk: %v", s)
	}

	// Killed and started again on the full disk: it starts, serves reads,
	// and says why it refuses writes.
	if err := lp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-lp.done
	lp.done <- nil
	lp2, err := launchKVD(t, ctx, dir, lp.addr)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, lp2.addr)
	c2 := lp2.client()
	checkAcked(t, ctx, c2, acked, "the restarted node")
	refusesPut(t, ctx, c2, dir)
	if out := lp2.output(); !strings.Contains(out, "refusing writes: no space: data dir "+dir) {
		t.Fatalf("the restarted node did not log why it refuses writes:\n%s", out)
	}

	// Space comes back: writes resume, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitWrites(t, ctx, c2)
	checkAcked(t, ctx, c2, acked, "the node with space again")
	alive(t, lp2.proc, "the restarted kvd")
}

// TestFullDiskOneNodeOfThree runs three kvd processes, one of them (n3)
// with its data dir on a 64 MiB tmpfs, and writes 256 KiB values through
// n1 until the cluster refuses: n3's NOSPACE alarm stops writes on every
// node, no process dies, reads keep working everywhere, n3 restarted on
// its full disk serves reads, and once its tmpfs grows writes resume.
func TestFullDiskOneNodeOfThree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mnt := mountTmpfs(t, 64)
	nodes := startClusterIn(t, ctx, []string{t.TempDir(), t.TempDir(), mnt})
	n1, n3 := nodes[0], nodes[2]
	short := n3.dir

	acked := fillUntilRefused(t, ctx, n1.kv(), short)
	if len(acked) < 10 {
		t.Fatalf("only %d puts of 256 KiB acknowledged", len(acked))
	}
	for _, n := range nodes {
		alive(t, n.p.proc, n.name)
		refusesPut(t, ctx, n.kv(), short)
		checkAcked(t, ctx, n.kv(), acked, n.name)
	}
	resp, err := n1.cluster().Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_LIST}))
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.Msg.GetAlarms(); len(a) != 1 || a[0].GetMemberId() != "n3" || a[0].GetAlarm() != kvstorev1.AlarmType_ALARM_TYPE_NOSPACE {
		t.Fatalf("alarms: %v, want n3's NOSPACE", a)
	}

	// n3, killed and started again on its full disk, serves reads and
	// refuses writes; the alarm holds across the restart.
	addr := n3.p.addr
	n3.kill(t)
	n3.start(t, ctx, addr)
	waitReady(t, ctx, n3.p.addr)
	checkAcked(t, ctx, n3.kv(), acked, "n3 restarted")
	refusesPut(t, ctx, n3.kv(), short)
	refusesPut(t, ctx, n1.kv(), short)

	resizeTmpfs(t, mnt, 256)
	waitWrites(t, ctx, n1.kv())
	for _, n := range nodes {
		alive(t, n.p.proc, n.name)
		checkAcked(t, ctx, n.kv(), acked, n.name)
	}
}
