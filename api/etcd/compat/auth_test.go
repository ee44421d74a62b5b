package compat

import (
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestAuth: etcd's Auth API (clientv3) on kvstore's users and roles: set
// up as etcdctl does, then a user with a prefix is let in there only, and
// a client without credentials is refused.
func TestAuth(t *testing.T) {
	c, ctx := cluster(t, 1)
	anon := newClient(t, c)
	if _, err := anon.AuthEnable(ctx); !errors.Is(err, rpctypes.ErrRootUserNotExist) {
		t.Fatalf("enable without root: %v", err)
	}
	steps := []func() error{
		func() error { _, err := anon.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := anon.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := anon.RoleAdd(ctx, "app"); return err },
		func() error {
			_, err := anon.RoleGrantPermission(ctx, "app", "app/", clientv3.GetPrefixRangeEnd("app/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := anon.UserGrantRole(ctx, "alice", "app"); return err },
		func() error { _, err := anon.AuthEnable(ctx); return err },
	}
	for i, f := range steps {
		if err := f(); err != nil {
			t.Fatalf("setup step %d: %v", i, err)
		}
	}
	if _, err := anon.UserAdd(ctx, "alice", "x"); err == nil {
		t.Fatal("user add without credentials while enabled succeeded")
	}

	user := func(name, pw string) *clientv3.Client {
		cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Username: name, Password: pw})
		if err != nil {
			t.Fatalf("connect as %s: %v", name, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	alice := user("alice", "alicepw")
	if _, err := alice.Put(ctx, "app/x", "1"); err != nil {
		t.Fatalf("put in the prefix: %v", err)
	}
	if g, err := alice.Get(ctx, "app/", clientv3.WithPrefix()); err != nil || len(g.Kvs) != 1 {
		t.Fatalf("get the prefix: %v %v", g, err)
	}
	if _, err := alice.Put(ctx, "other", "1"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("put outside: %v", err)
	}
	_, err := alice.Txn(ctx).Then(clientv3.OpPut("app/t", "t"), clientv3.OpPut("other", "t")).Commit()
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("txn with a key outside: %v", err)
	}
	wch := alice.Watch(ctx, "other")
	select {
	case wr := <-wch:
		if !wr.Canceled {
			t.Fatalf("watch outside: %+v", wr)
		}
	case <-ctx.Done():
		t.Fatal("watch outside: no answer")
	}
	if _, err := anon.Get(ctx, "app/x"); err == nil {
		t.Fatal("get without credentials succeeded")
	}

	root := user("root", "rootpw")
	if g, err := root.Get(ctx, "app/t"); err != nil || len(g.Kvs) != 0 {
		t.Fatalf("the refused txn wrote: %v %v", g, err)
	}
	ul, err := root.UserList(ctx)
	if err != nil || len(ul.Users) != 2 {
		t.Fatalf("user list: %v %v", ul, err)
	}
	rg, err := root.RoleGet(ctx, "app")
	if err != nil || len(rg.Perm) != 1 || string(rg.Perm[0].Key) != "app/" || rg.Perm[0].PermType != clientv3.PermReadWrite {
		t.Fatalf("role get: %v %v", rg, err)
	}
	bad, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Username: "alice", Password: "wrong"})
	if err == nil {
		bad.Close()
	}
	if !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("a wrong password: %v", err)
	}
	if _, err := root.AuthDisable(ctx); err != nil {
		t.Fatalf("auth disable: %v", err)
	}
	st, err := anon.AuthStatus(ctx)
	if err != nil || st.Enabled {
		t.Fatalf("status after disable: %v %v", st, err)
	}
}
