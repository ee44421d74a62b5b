package ctl

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kvstore/kvstore/node/nodetest"
)

// readmeSession is one `$ command` line of a README example and the text
// it prints (stdout, then stderr).
type readmeSession struct {
	line, want string
}

// readmeExample returns the first sh block after the README heading.
func readmeExample(t *testing.T, heading string) []readmeSession {
	t.Helper()
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	_, rest, _ = strings.Cut(rest, "```sh\n")
	block, _, _ := strings.Cut(rest, "```\n")
	var out []readmeSession
	for _, l := range strings.SplitAfter(block, "\n") {
		if cmd, ok := strings.CutPrefix(l, "$ "); ok {
			out = append(out, readmeSession{line: strings.TrimSuffix(cmd, "\n")})
			continue
		}
		if len(out) == 0 {
			t.Fatalf("README %s: output before any command: %q", heading, l)
		}
		out[len(out)-1].want += l
	}
	return out
}

// TestReadmeAuthentication runs the README's Authentication example, as
// written, against a node and compares what each command prints.
func TestReadmeAuthentication(t *testing.T) {
	sessions := readmeExample(t, "## Authentication")
	if len(sessions) < 10 {
		t.Fatalf("README example has %d commands", len(sessions))
	}
	cl := nodetest.NewCluster(t, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cl.Leader(ctx)
	addr := cl.Endpoints()[0]
	for _, s := range sessions {
		words := strings.Fields(s.line)
		// Leading NAME=VALUE words are the command's environment.
		var env []string
		for len(words) > 0 && strings.Contains(words[0], "=") {
			k, v, _ := strings.Cut(words[0], "=")
			t.Setenv(k, v)
			env = append(env, k)
			words = words[1:]
		}
		if len(words) == 0 || words[0] != "kvctl" {
			t.Fatalf("README line %q is not a kvctl command", s.line)
		}
		args := append([]string{"--endpoints", addr}, words[1:]...)
		var out, errOut bytes.Buffer
		code := run(ctx, args, strings.NewReader(""), &out, &errOut)
		got := out.String() + errOut.String()
		if got != s.want {
			t.Fatalf("$ %s\nexit %d, printed:\n%s\nREADME says:\n%s", s.line, code, got, s.want)
		}
		if wantFail := strings.HasPrefix(s.want, "kvctl: "); (code != 0) != wantFail {
			t.Fatalf("$ %s: exit %d", s.line, code)
		}
		for _, k := range env {
			os.Unsetenv(k)
		}
	}

	// Passwords left out are read from standard input when it is not a
	// terminal: one line each.
	stdin := func(in string, args ...string) string {
		var out, errOut bytes.Buffer
		run(ctx, append([]string{"--endpoints", addr}, args...), strings.NewReader(in), &out, &errOut)
		return out.String() + errOut.String()
	}
	if got := stdin("bobpw\n", "user", "add", "bob"); got != "User bob created\n" {
		t.Fatalf("user add with the password on stdin: %q", got)
	}
	if got := stdin("", "--user", "root:rootpw", "auth", "enable"); got != "Authentication Enabled\n" {
		t.Fatalf("auth enable: %q", got)
	}
	// bob authenticates (his password read from stdin) and has no role.
	if got, want := stdin("bobpw\n", "--user", "bob", "get", "x"), "kvctl: get: permission_denied: permission denied: user \"bob\" may not read key \"x\"\n"; got != want {
		t.Fatalf("get as bob: %q, want %q", got, want)
	}
	if got, want := stdin("wrong\n", "--user", "bob", "get", "x"), "kvctl: get: authenticate as \"bob\": unauthenticated: authentication failed: wrong user name or password\n"; got != want {
		t.Fatalf("get as bob with a wrong password: %q, want %q", got, want)
	}
}
