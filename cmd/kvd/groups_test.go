package main

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestREADMEGroups runs the README's "Raft groups" commands as written, on
// three kvd processes on free ports.
func TestREADMEGroups(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	var addrs []string
	for i, name := range []string{"n1", "n2", "n3"} {
		args := []string{"--name", name, "--bootstrap-expect", "3"}
		if i > 0 {
			args = append(args, "--join", addrs[0])
		}
		p, err := launchKVD(t, ctx, filepath.Join(dir, name), "127.0.0.1:0", args...)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, p.addr)
	}
	env := []string{"KVCTL_ENDPOINTS=" + strings.Join(addrs, ",")}
	kvctl := func(args ...string) (string, error) { return kvctlEnv(t, ctx, dir, env, args...) }
	for {
		out, err := kvctl("members")
		if err == nil && strings.Count(out, "voter") == 3 && strings.Contains(out, "yes") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the cluster did not form: %v, %q", err, out)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"group", "create", "events", "--prefix", "/registry/events/"}, "created group 1 (events) over [\"/registry/events/\", \"/registry/events0\") on n1,n2,n3\n"},
		{[]string{"put", "/registry/events/e1", "started"}, "OK\n"},
		{[]string{"put", "/registry/pods/p1", "running"}, "OK\n"},
	} {
		if out, err := kvctl(c.args...); err != nil || out != c.want {
			t.Fatalf("kvctl %v: %v, %q; want %q", c.args, err, out, c.want)
		}
	}
	out, err := kvctl("group", "list")
	if err != nil {
		t.Fatalf("kvctl group list: %v, %q", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	keysAndSize := regexp.MustCompile(` 1 +[1-9][0-9]* MiB$`) // one key each, and the disk it takes
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "ID NAME RANGES REPLICAS LEADER REVISION KEYS SIZE" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), `0 meta ["", "/registry/events/") ["/registry/events0", +inf) (the cluster's voters) n`) ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[2]), " "), `1 events ["/registry/events/", "/registry/events0") n1,n2,n3 n`) ||
		!keysAndSize.MatchString(lines[1]) || !keysAndSize.MatchString(lines[2]) {
		t.Fatalf("kvctl group list:\n%s", out)
	}
	if out, err := kvctl("get", "/registry/events/e1", "-o", "json"); err != nil || !strings.Contains(out, `"group":"1"`) {
		t.Fatalf("kvctl get -o json: %v, %q", err, out)
	}
	if out, err := kvctl("snapshot", "save", "backup.snap"); err == nil || !strings.Contains(out, "backups of a cluster with data groups are not built yet") {
		t.Fatalf("kvctl snapshot save with a data group: %v, %q", err, out)
	}
	// The fourth node, then the move.
	if _, err := launchKVD(t, ctx, filepath.Join(dir, "n4"), "127.0.0.1:0", "--name", "n4", "--join", addrs[0]); err != nil {
		t.Fatal(err)
	}
	for {
		out, err := kvctl("members")
		if err == nil && strings.Contains(out, "n4") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("n4 did not join: %v, %q", err, out)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	if out, err := kvctl("group", "move", "events", "--to", "n2,n3,n4"); err != nil || out != "moved group 1 (events) to n2,n3,n4\n" {
		t.Fatalf("kvctl group move: %v, %q", err, out)
	}
	if out, err := kvctl("get", "/registry/events/e1"); err != nil || out != "started\n" {
		t.Fatalf("kvctl get after the move: %v, %q", err, out)
	}
	want := `kvctl: range: failed_precondition: the keys lie in groups 0 (meta): ["/registry/", "/registry/events/"), ["/registry/events0", "/registry0"); 1 (events): ["/registry/events/", "/registry/events0"); a request must stay within one group` + "\n"
	if out, err := kvctl("range", "/registry/", "--prefix"); err == nil || out != want {
		t.Fatalf("kvctl range over both groups: %v, %q; want %q", err, out, want)
	}
}
