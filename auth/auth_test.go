package auth

import (
	"errors"
	"testing"
	"time"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

const (
	rd = kvstorev1.PermissionType_PERMISSION_TYPE_READ
	wr = kvstorev1.PermissionType_PERMISSION_TYPE_WRITE
	rw = kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE
)

func change(c *kvstorev1.AuthChangeRequest) *raftcmdv1.AuthCommand {
	return &raftcmdv1.AuthCommand{Change: c}
}

// build applies changes in order from the empty state, failing the test on
// any refusal.
func build(t *testing.T, changes ...*raftcmdv1.AuthCommand) *State {
	t.Helper()
	s := NewState(nil)
	for i, c := range changes {
		next, err := Apply(s, c, uint64(i+1))
		if err != nil {
			t.Fatalf("change %d (%v): %v", i, c, err)
		}
		s = next
	}
	return s
}

var seed = make([]byte, 32)

func enable() *raftcmdv1.AuthCommand {
	return &raftcmdv1.AuthCommand{Change: &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}}, SigningSeed: seed}
}

func userAdd(name string) *raftcmdv1.AuthCommand {
	return change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: name, NoPassword: true}}})
}

func roleAdd(name string) *raftcmdv1.AuthCommand {
	return change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: name}}})
}

func grant(role string, t kvstorev1.PermissionType, key, end string) *raftcmdv1.AuthCommand {
	return change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{
		Role: role, Permission: &kvstorev1.Permission{Type: t, Key: []byte(key), RangeEnd: []byte(end)}}}})
}

func grantRole(user, role string) *raftcmdv1.AuthCommand {
	return change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: user, Role: role}}})
}

func TestCheck(t *testing.T) {
	s := build(t,
		userAdd("root"), userAdd("alice"), userAdd("bob"), userAdd("nobody"),
		roleAdd("app"), grant("app", rw, "app/", "app0"), // the prefix app/
		grant("app", rd, "conf", ""), // the one key conf
		roleAdd("split"), grant("split", rd, "a", "c"), grant("split", rd, "c", "e"),
		grant("split", wr, "x", "\x00"), // every key from x on
		grantRole("alice", "app"), grantRole("bob", "split"),
		enable(),
	)
	R, W := Read, Write
	tests := []struct {
		user string
		need Need
		ok   bool
	}{
		{"root", Need{R | W, []byte(""), []byte("\x00")}, true},
		{"alice", Need{W, []byte("app/x"), nil}, true},
		{"alice", Need{R | W, []byte("app/"), []byte("app0")}, true},
		{"alice", Need{R, []byte("app/a"), []byte("app/b")}, true},
		{"alice", Need{R, []byte("app/"), []byte("app1")}, false}, // past the prefix
		{"alice", Need{R, []byte("app"), nil}, false},             // the prefix without its slash
		{"alice", Need{W, []byte("other"), nil}, false},
		{"alice", Need{R, []byte("conf"), nil}, true},
		{"alice", Need{W, []byte("conf"), nil}, false},             // read only
		{"alice", Need{R, []byte("conf"), []byte("confa")}, false}, // a range past the one key
		{"alice", Need{R, []byte("conf\x00"), nil}, false},
		{"alice", Need{R, []byte(""), []byte("\x00")}, false},
		{"bob", Need{R, []byte("a"), []byte("e")}, true}, // two grants that meet
		{"bob", Need{R, []byte("b"), []byte("d")}, true},
		{"bob", Need{R, []byte("a"), []byte("e\x00")}, false},
		{"bob", Need{W, []byte("a"), nil}, false},
		{"bob", Need{W, []byte("x"), []byte("\x00")}, true},
		{"bob", Need{W, []byte("zzz"), nil}, true},
		{"bob", Need{W, []byte("w"), []byte("\x00")}, false},
		{"nobody", Need{R, []byte("a"), nil}, false},
		{"ghost", Need{R, []byte("a"), nil}, false},
	}
	for _, tc := range tests {
		err := s.Check(tc.user, tc.need)
		if (err == nil) != tc.ok {
			t.Errorf("%s %v: got %v, want ok=%v", tc.user, tc.need, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrPermissionDenied) && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s %v: %v matches neither refusal", tc.user, tc.need, err)
		}
	}
	if err := s.Check("ghost"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("unknown user: %v, want unauthenticated", err)
	}
	// Several needs: one denied denies all.
	if err := s.Check("alice", Need{W, []byte("app/1"), nil}, Need{W, []byte("x"), nil}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("one denied need among two: %v", err)
	}
	// Off: anyone may do anything.
	off := build(t, userAdd("alice"))
	if err := off.Check("", Need{W, []byte("k"), nil}); err != nil {
		t.Errorf("auth off: %v", err)
	}
}

func TestApplyRules(t *testing.T) {
	s := NewState(nil)
	if _, err := Apply(s, enable(), 1); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("enable without root: %v", err)
	}
	s = build(t, userAdd("root"), enable())
	if !s.Enabled() || !s.IsRoot("root") {
		t.Fatalf("enable: enabled=%v root has root role=%v", s.Enabled(), s.IsRoot("root"))
	}
	refused := []struct {
		name string
		cmd  *raftcmdv1.AuthCommand
		want error
	}{
		{"delete root while on", change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserDelete{UserDelete: &kvstorev1.UserDelete{Name: "root"}}}), ErrFailedPrecondition},
		{"revoke root's root role", change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserRevokeRole{UserRevokeRole: &kvstorev1.UserRevokeRole{User: "root", Role: "root"}}}), ErrFailedPrecondition},
		{"user twice", userAdd("root"), ErrExists},
		{"plain password", change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "x", Password: "secret"}}}), ErrInvalid},
		{"bad name", userAdd("a b"), ErrInvalid},
		{"grant to a missing role", grant("nope", rd, "a", ""), ErrNotFound},
		{"grant a missing role", grantRole("root", "nope"), ErrNotFound},
		{"empty change", change(&kvstorev1.AuthChangeRequest{}), ErrInvalid},
	}
	for _, tc := range refused {
		if _, err := Apply(s, tc.cmd, 9); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Refusals leave the state as it was.
	if !s.Enabled() || s.User("root") == nil || s.User("x") != nil {
		t.Fatal("a refused change altered the state")
	}
	// Encoding round trip.
	b, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil || !back.Enabled() || !back.IsRoot("root") {
		t.Fatalf("decode: %v enabled=%v", err, back.Enabled())
	}
}

func TestTokens(t *testing.T) {
	hash, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	add := change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "alice", PasswordHash: hash}}})
	s := build(t, userAdd("root"), add, enable())
	if err := s.Login("alice", "wrong"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := s.Login("alice", "pw"); err != nil {
		t.Fatalf("login: %v", err)
	}
	now := time.Unix(1_800_000_000, 0)
	tok, exp, err := s.Token("alice", now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(now.Add(time.Minute)) {
		t.Errorf("expiry %v", exp)
	}
	if u, err := s.Verify(tok, now.Add(30*time.Second)); err != nil || u != "alice" {
		t.Fatalf("verify: %q %v", u, err)
	}
	refused := map[string]func() (*State, string, time.Time){
		"expired": func() (*State, string, time.Time) { return s, tok, now.Add(2 * time.Minute) },
		"tampered": func() (*State, string, time.Time) {
			b := []byte(tok)
			b[len(b)-3] ^= 1
			return s, string(b), now
		},
		"password changed": func() (*State, string, time.Time) {
			h2, _ := HashPassword("pw2")
			next, err := Apply(s, change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserChangePassword{UserChangePassword: &kvstorev1.UserChangePassword{Name: "alice", PasswordHash: h2}}}), 10)
			if err != nil {
				t.Fatal(err)
			}
			return next, tok, now
		},
		"user deleted": func() (*State, string, time.Time) {
			next, err := Apply(s, change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserDelete{UserDelete: &kvstorev1.UserDelete{Name: "alice"}}}), 10)
			if err != nil {
				t.Fatal(err)
			}
			return next, tok, now
		},
		"re-enabled with another key": func() (*State, string, time.Time) {
			other := enable()
			other.SigningSeed = append(make([]byte, 31), 1)
			next, err := Apply(s, other, 10)
			if err != nil {
				t.Fatal(err)
			}
			return next, tok, now
		},
		"disabled": func() (*State, string, time.Time) {
			next, err := Apply(s, change(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Disable{Disable: &kvstorev1.AuthDisable{}}}), 10)
			if err != nil {
				t.Fatal(err)
			}
			return next, tok, now
		},
		"garbage": func() (*State, string, time.Time) { return s, "not.a.token", now },
	}
	for name, f := range refused {
		st, tk, at := f()
		if _, err := st.Verify(tk, at); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: %v, want unauthenticated", name, err)
		}
	}
}

// BenchmarkVerify: a token checked for the first time (its signature) and
// again (remembered by the State).
func BenchmarkVerify(b *testing.B) {
	s := NewState(nil)
	for i, c := range []*raftcmdv1.AuthCommand{userAdd("root"), enable()} {
		next, err := Apply(s, c, uint64(i+1))
		if err != nil {
			b.Fatal(err)
		}
		s = next
	}
	now := time.Now()
	tok, _, err := s.Token("root", now, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			fresh := NewState(s.proto())
			if _, err := fresh.Verify(tok, now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("again", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Verify(tok, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
