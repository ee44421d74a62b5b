package main

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The README's TLS section, run as written but on free ports and in a
// temporary directory: kvctl certs makes the CA and certificates, three kvd
// processes form a cluster with TLS and client certificates required, and
// kvctl and curl talk to it with the client certificate, and are refused
// without it.

// kvctlIn runs the kvd binary as kvctl in dir.
func kvctlIn(t *testing.T, ctx context.Context, dir string, args ...string) (string, error) {
	t.Helper()
	return kvctlEnv(t, ctx, dir, nil, args...)
}

// kvctlEnv is kvctlIn with more environment variables.
func kvctlEnv(t *testing.T, ctx context.Context, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	kvctl := filepath.Join(t.TempDir(), "kvctl")
	if err := os.Symlink(kvdBinary, kvctl); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, kvctl, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestREADMETLSCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "ca", "--dir", "certs"},
		{"certs", "node", "--dir", "certs", "--name", "n1", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "node", "--dir", "certs", "--name", "n2", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "node", "--dir", "certs", "--name", "n3", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "client", "--dir", "certs", "--name", "alice"},
	} {
		if out, err := kvctlIn(t, ctx, dir, args...); err != nil || !strings.HasPrefix(out, "wrote ") {
			t.Fatalf("kvctl %v: %v, %q", args, err, out)
		}
	}
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	cert := func(f string) string { return filepath.Join(dir, "certs", f) }
	var addrs []string
	for i, name := range []string{"n1", "n2", "n3"} {
		args := []string{"--name", name, "--bootstrap-expect", "3", "--gossip-key", key,
			"--cert-file", cert(name + ".pem"), "--key-file", cert(name + "-key.pem"),
			"--trusted-ca-file", cert("ca.pem"), "--client-cert-auth"}
		if i > 0 {
			args = append(args, "--join", addrs[0])
		}
		p, err := launchKVD(t, ctx, filepath.Join(dir, name), "127.0.0.1:0", args...)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, p.addr)
	}
	eps := "https://" + strings.Join(addrs, ",https://")
	creds := []string{"--endpoints", eps, "--cacert", "certs/ca.pem", "--cert", "certs/alice.pem", "--key", "certs/alice-key.pem"}
	// The cluster forms over TLS: every node sees three voters.
	for {
		out, err := kvctlIn(t, ctx, dir, append(creds, "members")...)
		if err == nil && strings.Count(out, "voter") == 3 && strings.Contains(out, "yes") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the TLS cluster did not form: %v, %q", err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if out, err := kvctlIn(t, ctx, dir, append(creds, "put", "greeting", "hello")...); err != nil || out != "OK\n" {
		t.Fatalf("kvctl put over TLS: %v, %q", err, out)
	}
	for _, ep := range addrs {
		c := append([]string{"--endpoints", ep}, creds[2:]...)
		if out, err := kvctlIn(t, ctx, dir, append(c, "get", "greeting")...); err != nil || out != "hello\n" {
			t.Fatalf("kvctl get on %s (host:port with --cacert means https): %v, %q", ep, err, out)
		}
		if out, err := kvctlIn(t, ctx, dir, append(c, "health")...); err != nil || out != ep+" ok\n" {
			t.Fatalf("kvctl health on %s: %v, %q", ep, err, out)
		}
	}
	// The README's environment form, with host:port endpoints.
	env := []string{"KVCTL_ENDPOINTS=" + strings.Join(addrs, ","), "KVCTL_CACERT=certs/ca.pem", "KVCTL_CERT=certs/alice.pem", "KVCTL_KEY=certs/alice-key.pem"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "greeting"}, "hello\n"},
		{[]string{"--protocol", "grpc", "get", "greeting"}, "hello\n"},
		{[]string{"members"}, "n3"},
		{[]string{"health"}, addrs[2] + " ok\n"},
	} {
		if out, err := kvctlEnv(t, ctx, dir, env, tc.args...); err != nil || !strings.Contains(out, tc.want) {
			t.Fatalf("KVCTL_* kvctl %v: %v, %q; want %q", tc.args, err, out, tc.want)
		}
	}
	// Gossip key rotation, as the README does it.
	newKey := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
	for _, step := range []struct {
		args []string
		fps  int // fingerprints shown: per node, the primary and every key
	}{
		{[]string{"gossip-key", "install", newKey}, 9},
		{[]string{"gossip-key", "use", newKey}, 9},
		{[]string{"gossip-key", "remove", key}, 6},
		{[]string{"gossip-key", "list"}, 6},
	} {
		out, err := kvctlEnv(t, ctx, dir, env, step.args...)
		if err != nil || strings.Count(out, "sha256:") != step.fps || strings.Count(out, "\n") != 4 {
			t.Fatalf("kvctl %v: %v, %q", step.args, err, out)
		}
	}
	out, err := kvctlEnv(t, ctx, dir, env, "gossip-key", "remove", newKey)
	if err == nil || !strings.Contains(out, "primary") {
		t.Fatalf("kvctl gossip-key remove of the primary key: %v, %q; want a refusal", err, out)
	}
	// Refused: without a client certificate, and in plaintext.
	for _, args := range [][]string{
		{"--endpoints", eps, "--cacert", "certs/ca.pem", "get", "greeting"},
		{"--endpoints", strings.Join(addrs, ","), "get", "greeting"},
		{"--endpoints", eps, "get", "greeting"}, // the system's roots do not know the CA
	} {
		out, err := kvctlIn(t, ctx, dir, args...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("kvctl %v: %v, %q; want exit 1", args, err, out)
		}
	}

	if _, err := exec.LookPath("curl"); err != nil {
		t.Log("no curl: its examples not run")
		return
	}
	curl := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "10"}, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	curlCreds := []string{"--cacert", "certs/ca.pem", "--cert", "certs/alice.pem", "--key", "certs/alice-key.pem"}
	out, err = curl(append(curlCreds, "-H", "Content-Type: application/json", "-d", `{"key":"Z3JlZXRpbmc="}`, "https://"+addrs[1]+"/kvstore.v1.KVService/Get")...)
	if err != nil || !strings.Contains(out, `"value":"aGVsbG8="`) {
		t.Fatalf("curl Get over TLS: %v, %q", err, out)
	}
	if out, err := curl(append(curlCreds, "https://"+addrs[0]+"/readyz")...); err != nil || !strings.HasPrefix(out, "ok") {
		t.Fatalf("curl /readyz over TLS: %v, %q", err, out)
	}
	if out, _ := curl("http://" + addrs[0] + "/readyz"); !strings.Contains(out, "serves TLS only") {
		t.Fatalf("curl in plaintext: %q, want to be told to use TLS", out)
	}
}

// TestREADMEAutoTLS: a node with --auto-tls serves TLS with a certificate
// clients cannot verify; kvctl --insecure-skip-tls-verify talks to it.
func TestREADMEAutoTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	p, err := launchKVD(t, ctx, filepath.Join(dir, "auto"), "127.0.0.1:0", "--auto-tls", "--gossip-key", key)
	if err != nil {
		t.Fatal(err)
	}
	if !p.logged("auto TLS: serving with a self-signed certificate made at start; this is unsafe for production: clients cannot verify this node (they need --insecure-skip-tls-verify), and it trusts no other node as a peer unless peer files are given") {
		t.Error("--auto-tls did not warn that it is unsafe for production")
	}
	for {
		out, err := kvctlIn(t, ctx, dir, "--endpoints", "https://"+p.addr, "--insecure-skip-tls-verify", "put", "k", "v")
		if err == nil && out == "OK\n" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kvctl --insecure-skip-tls-verify put: %v, %q", err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	out, err := kvctlIn(t, ctx, dir, "--endpoints", "https://"+p.addr, "get", "k")
	if err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("kvctl verifying an auto TLS node: %v, %q; want a certificate error", err, out)
	}
}

// TestTLSFlagsRefused: TLS without a gossip key, and TLS flags that do not
// go together, exit 2 before touching the disk.
func TestTLSFlagsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--auto-tls"}, "--gossip-key (none): TLS is on"},
		{[]string{"--cert-file", "x.pem"}, "the cert file and the key file go together"},
		{[]string{"--client-cert-auth"}, "TLS settings given without a certificate"},
		{[]string{"--auto-tls", "--gossip-key", "MDEyMzQ1Njc4OWFiY2RlZg==", "--tls-min-version", "1.1"}, "--tls-min-version"},
		{[]string{"--allow-plaintext-clients"}, "means something only with TLS on"},
	} {
		dir := filepath.Join(t.TempDir(), "d")
		out, err := exec.CommandContext(ctx, kvdBinary, append([]string{"--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.args...)...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("kvd %v: %v, %q; want exit 2 saying %q", tc.args, err, out, tc.want)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("kvd %v left %s behind", tc.args, dir)
		}
	}
}

// TestREADMESecureCluster runs the README's "A secure cluster" as written,
// on free ports and in a temporary directory: three kvd processes with
// TLS, client certificates required and a gossip key; users, a role and
// authentication on, set up through kvctl; then calls with credentials (a
// password, a certificate's user) succeed, through any node, and calls
// without them are refused with exit 1 and the README's messages.
func TestREADMESecureCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "ca", "--dir", "certs"},
		{"certs", "node", "--dir", "certs", "--name", "s1", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "node", "--dir", "certs", "--name", "s2", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "node", "--dir", "certs", "--name", "s3", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"certs", "client", "--dir", "certs", "--name", "alice"},
		{"certs", "client", "--dir", "certs", "--name", "web"},
	} {
		if out, err := kvctlIn(t, ctx, dir, args...); err != nil || !strings.HasPrefix(out, "wrote ") {
			t.Fatalf("kvctl %v: %v, %q", args, err, out)
		}
	}
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	var addrs []string
	for i, name := range []string{"s1", "s2", "s3"} {
		args := []string{"--name", name, "--bootstrap-expect", "3", "--gossip-key", key,
			"--cert-file", "certs/" + name + ".pem", "--key-file", "certs/" + name + "-key.pem",
			"--trusted-ca-file", "certs/ca.pem", "--client-cert-auth"}
		if i > 0 {
			args = append(args, "--join", addrs[0])
		}
		// Relative paths, as in the README: kvd runs in dir.
		p, err := launchKVDIn(t, ctx, dir, name, "127.0.0.1:0", args...)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, p.addr)
	}
	env := []string{"KVCTL_ENDPOINTS=" + strings.Join(addrs, ","), "KVCTL_CACERT=certs/ca.pem", "KVCTL_CERT=certs/web.pem", "KVCTL_KEY=certs/web-key.pem"}
	for {
		out, err := kvctlEnv(t, ctx, dir, env, "members")
		if err == nil && strings.Count(out, "voter") == 3 && strings.Contains(out, "yes") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the secure cluster did not form: %v, %q", err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	alice := []string{"--cert", "certs/alice.pem", "--key", "certs/alice-key.pem"}
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "add", "root:rootpw"}, "User root created\n"},
		{[]string{"user", "add", "bob", "--new-user-password", "bobpw"}, "User bob created\n"},
		{[]string{"user", "add", "alice", "--no-password"}, "User alice created\n"},
		{[]string{"role", "add", "app"}, "Role app created\n"},
		{[]string{"role", "grant-permission", "app", "readwrite", "app/", "--prefix"}, "Role app updated\n"},
		{[]string{"user", "grant-role", "bob", "app"}, "Role app is granted to user bob\n"},
		{[]string{"user", "grant-role", "alice", "app"}, "Role app is granted to user alice\n"},
		{[]string{"auth", "enable"}, "Authentication Enabled\n"},
		// With credentials, at once after the enabling (a node may not
		// have applied it yet), through any node.
		{[]string{"--user", "bob:bobpw", "put", "app/greeting", "hello"}, "OK\n"},
		{append(alice, "get", "app/greeting"), "hello\n"},
		{append(alice, "--endpoints", addrs[2], "put", "app/from-alice", "hi"), "OK\n"},
		{[]string{"--user", "root:rootpw", "user", "list"}, "alice\nbob\nroot\n"},
	} {
		if out, err := kvctlEnv(t, ctx, dir, env, step.args...); err != nil || out != step.want {
			t.Fatalf("kvctl %v: %v, %q; want %q", step.args, err, out, step.want)
		}
	}
	// Alice's write, read linearizably on every node (a follower asks the
	// leader for a read index, over TLS).
	for _, addr := range addrs {
		if out, err := kvctlEnv(t, ctx, dir, env, append(alice, "--endpoints", addr, "get", "app/from-alice")...); err != nil || out != "hi\n" {
			t.Fatalf("alice's write read on %s: %v, %q", addr, err, out)
		}
	}
	// Without credentials: refused, exit 1, as the README shows.
	for _, tc := range []struct {
		env  []string
		args []string
		want []string // one of
	}{
		{nil, []string{"get", "app/greeting"}, []string{`kvctl: get: unauthenticated: authentication failed: the client certificate names user "web", who does not exist` + "\n"}},
		{nil, []string{"--user", "bob:wrong", "get", "app/greeting"}, []string{`kvctl: get: authenticate as "bob": unauthenticated: authentication failed: wrong user name or password` + "\n"}},
		{nil, append(alice, "put", "other", "x"), []string{`kvctl: put: permission_denied: permission denied: user "alice" may not write key "other"` + "\n"}},
		{nil, []string{"--user", "bob:bobpw", "user", "list"}, []string{`kvctl: user list: permission_denied: permission denied: user "bob" does not have the root role` + "\n"}},
		{[]string{"KVCTL_CERT=", "KVCTL_KEY="}, []string{"--user", "bob:bobpw", "get", "app/greeting"}, []string{
			`kvctl: get: authenticate as "bob": unavailable: remote error: tls: certificate required` + "\n",
			// Go's HTTP/2 client sometimes drops the cause (the README says so).
			`kvctl: get: authenticate as "bob": unavailable: http2: client conn could not be established` + "\n",
		}},
	} {
		out, err := kvctlEnv(t, ctx, dir, append(slices.Clone(env), tc.env...), tc.args...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !slices.Contains(tc.want, out) {
			t.Errorf("kvctl %v (%v): %v, %q; want exit 1 and one of %q", tc.args, tc.env, err, out, tc.want)
		}
	}

	// The examples of "Using it" and "Watches, leases and locks": as root
	// (KVCTL_USER, KVCTL_PASSWORD), as there; without credentials, each
	// refused.
	root := append(slices.Clone(env), "KVCTL_USER=root", "KVCTL_PASSWORD=rootpw")
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"put", "greeting", "hello"}, "OK\n"},
		{[]string{"get", "greeting"}, "hello\n"},
		{[]string{"put", "config/a", "1"}, "OK\n"},
		{[]string{"put", "config/b", "2"}, "OK\n"},
		{[]string{"range", "--prefix", "config/"}, "config/a\n1\nconfig/b\n2\n"},
		{[]string{"cas", "greeting", "hi", "--expect-value", "hello"}, "SUCCEEDED\n"},
		{[]string{"del", "--prefix", "config/"}, "2\n"},
		{[]string{"--protocol", "grpc", "get", "greeting"}, "hi\n"},
		{[]string{"watch", "config/a", "--rev", "1", "--prev-kv", "--timeout", "3s"}, " DELETE config/a (prev 1)\n"},
		{[]string{"lock", "jobs/nightly", "--", "echo", "hello"}, "hello\n"},
		{[]string{"lease", "list"}, "ID  TTL\n"},
	} {
		out, err := kvctlEnv(t, ctx, dir, root, step.args...)
		if err != nil || !strings.HasSuffix(out, step.want) {
			t.Errorf("as root: kvctl %v: %v, %q; want %q", step.args, err, out, step.want)
		}
		out, err = kvctlEnv(t, ctx, dir, env, step.args...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, `unauthenticated: authentication failed: the client certificate names user "web", who does not exist`) {
			t.Errorf("without credentials: kvctl %v: %v, %q; want exit 1, unauthenticated", step.args, err, out)
		}
	}
	lease, err := kvctlEnv(t, ctx, dir, root, "lease", "grant", "10s")
	if err != nil {
		t.Fatalf("as root: kvctl lease grant: %v, %q", err, lease)
	}
	lease = strings.TrimSpace(lease)
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"put", "--lease", lease, "svc/a", "up"}, "OK\n"},
		{[]string{"lease", "ttl", lease, "--keys"}, "svc/a\n"},
		{[]string{"lease", "keepalive", lease, "--once"}, "kept alive, TTL 10s\n"},
		{[]string{"lease", "revoke", lease}, "OK\n"},
	} {
		if out, err := kvctlEnv(t, ctx, dir, root, step.args...); err != nil || !strings.HasSuffix(out, step.want) {
			t.Errorf("as root: kvctl %v: %v, %q; want %q", step.args, err, out, step.want)
		}
	}

	if _, err := exec.LookPath("curl"); err != nil {
		t.Log("no curl: its examples not run")
		return
	}
	curl := func(cert string) (string, error) {
		cmd := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "10", "--cacert", "certs/ca.pem", "--cert", "certs/"+cert+".pem", "--key", "certs/"+cert+"-key.pem",
			"-H", "Content-Type: application/json", "-d", `{"key":"YXBwL2dyZWV0aW5n"}`, "https://"+addrs[1]+"/kvstore.v1.KVService/Get")
		cmd.Dir = dir
		out, err := cmd.Output()
		return string(out), err
	}
	if out, err := curl("alice"); err != nil || !regexp.MustCompile(`"nodeId":\s*"s2".*"value":\s*"aGVsbG8="`).MatchString(out) {
		t.Errorf("curl Get with alice's certificate: %v, %q", err, out)
	}
	if out, err := curl("web"); err != nil || out != `{"code":"unauthenticated","message":"authentication failed: the client certificate names user \"web\", who does not exist"}` {
		t.Errorf("curl Get with web's certificate: %v, %q", err, out)
	}
}
