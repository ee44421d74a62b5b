package nodetest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/node/tlsconf"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

func authChange(ctx context.Context, t *testing.T, cl *client.Client, c *kvstorev1.AuthChangeRequest) {
	t.Helper()
	if _, err := cl.Auth.AuthChange(ctx, connect.NewRequest(c)); err != nil {
		t.Fatalf("auth change %v: %v", c, err)
	}
}

func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// withToken is a request carrying a token as the Authorization header.
func withToken[T any](msg *T, tok string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set("Authorization", "Bearer "+tok)
	return r
}

// TestAuth: users and permissions on a 3-node cluster, through restarts
// of every node and to a node added later.
func TestAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(t, 3)
	c.Leader(ctx)
	anon := c.Client()

	// Auth off: anyone sets it up, as etcd allows.
	if _, err := anon.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("secret"), Value: []byte("s")})); err != nil {
		t.Fatal(err)
	}
	enable := &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}}
	_, err := anon.Auth.AuthChange(ctx, connect.NewRequest(enable))
	wantCode(t, "enable without root", err, connect.CodeFailedPrecondition)
	for _, u := range [][2]string{{"root", "rootpw"}, {"alice", "alicepw"}, {"bob", "bobpw"}} {
		authChange(ctx, t, anon, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: u[0], Password: u[1]}}})
	}
	authChange(ctx, t, anon, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: "app"}}})
	authChange(ctx, t, anon, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{
		Role: "app", Permission: &kvstorev1.Permission{Type: kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE, Key: []byte("app/"), RangeEnd: []byte("app0")}}}})
	for _, u := range []string{"alice", "bob"} {
		authChange(ctx, t, anon, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: u, Role: "app"}}})
	}
	authChange(ctx, t, anon, enable)

	// No credentials: refused, reads and writes alike (on every node once
	// it applied the enable: the writes are checked by the leader too).
	_, err = anon.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("app/x"), Value: []byte("v")}))
	wantCode(t, "put without credentials", err, connect.CodeUnauthenticated)
	_, err = anon.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("secret")}))
	wantCode(t, "get without credentials", err, connect.CodeUnauthenticated)
	_, err = anon.Auth.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: "alice", Password: "wrong"}))
	wantCode(t, "wrong password", err, connect.CodeUnauthenticated)

	newClient := func(user, pw string, endpoints []string) *client.Client {
		cl, err := client.New(endpoints, client.WithCredentials(user, pw))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	alice := newClient("alice", "alicepw", c.Endpoints())
	root := newClient("root", "rootpw", c.Endpoints())

	// Inside the prefix: put, get, range, watch.
	w := alice.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("app/"), Prefix: true})
	defer w.Close()
	if !w.Receive() || !w.Msg().GetCreated() {
		t.Fatalf("watch in the prefix: not created: %v", w.Err())
	}
	if _, err := alice.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("app/1"), Value: []byte("one")})); err != nil {
		t.Fatalf("put in the prefix: %v", err)
	}
	if g, err := alice.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")})); err != nil || string(g.Msg.GetKv().GetValue()) != "one" {
		t.Fatalf("get in the prefix: %v %v", g, err)
	}
	if _, err := alice.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("app/"), Prefix: true})); err != nil {
		t.Fatalf("range over the prefix: %v", err)
	}
	for got := false; !got; {
		if !w.Receive() {
			t.Fatalf("watch in the prefix: %v", w.Err())
		}
		for _, ev := range w.Msg().GetEvents() {
			got = got || string(ev.GetKv().GetKey()) == "app/1"
		}
	}

	// Outside: PermissionDenied, and the message names only what was asked.
	_, err = alice.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("other"), Value: []byte("v")}))
	wantCode(t, "put outside", err, connect.CodePermissionDenied)
	_, err = alice.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("nothing-here")}))
	wantCode(t, "get outside", err, connect.CodePermissionDenied)
	if bytes.Contains([]byte(err.Error()), []byte("secret")) {
		t.Errorf("a refusal names another key: %v", err)
	}
	_, err = alice.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("app/"), RangeEnd: []byte("b")}))
	wantCode(t, "range past the prefix", err, connect.CodePermissionDenied)
	sw := alice.Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("secret")})
	if sw.Receive() {
		t.Fatalf("watch outside delivered %v", sw.Msg())
	}
	wantCode(t, "watch outside", sw.Err(), connect.CodePermissionDenied)
	_, err = alice.KV.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: 1}))
	wantCode(t, "compact by a user without root", err, connect.CodePermissionDenied)
	_, err = alice.Auth.AuthChange(ctx, connect.NewRequest(&kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: "mine"}}}))
	wantCode(t, "role add by a user without root", err, connect.CodePermissionDenied)

	// A txn with one denied key writes nothing: neither branch's ops, and
	// its compares count too.
	txns := map[string]*kvstorev1.TxnRequest{
		"denied put in success": {Success: []*kvstorev1.RequestOp{
			{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("app/t"), Value: []byte("t")}}},
			{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("secret"), Value: []byte("t")}}},
		}},
		"denied get in failure": {
			Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("app/t"), Value: []byte("t")}}}},
			Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{Get: &kvstorev1.GetRequest{Key: []byte("secret")}}}},
		},
		"denied compare": {
			Compare: []*kvstorev1.Compare{{Key: []byte("secret"), Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL, Target: &kvstorev1.Compare_Version{Version: 1}}},
			Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("app/t"), Value: []byte("t")}}}},
		},
	}
	for name, txn := range txns {
		_, err := alice.KV.Txn(ctx, connect.NewRequest(txn))
		wantCode(t, name, err, connect.CodePermissionDenied)
	}
	_, err = root.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/t")}))
	wantCode(t, "the denied txns' key", err, connect.CodeNotFound)
	if g, err := root.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("secret")})); err != nil || string(g.Msg.GetKv().GetValue()) != "s" {
		t.Fatalf("root reads everything: %v %v", g, err)
	}

	// Tokens end with a password change and with their user.
	tokenOf := func(user, pw string) string {
		resp, err := anon.Auth.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: user, Password: pw}))
		if err != nil {
			t.Fatalf("authenticate %s: %v", user, err)
		}
		return resp.Msg.GetToken()
	}
	aliceTok, bobTok := tokenOf("alice", "alicepw"), tokenOf("bob", "bobpw")
	for _, tok := range []string{aliceTok, bobTok} {
		if _, err := anon.KV.Get(ctx, withToken(&kvstorev1.GetRequest{Key: []byte("app/1")}, tok)); err != nil {
			t.Fatalf("get with a fresh token: %v", err)
		}
	}
	authChange(ctx, t, root, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserChangePassword{UserChangePassword: &kvstorev1.UserChangePassword{Name: "alice", Password: "alicepw2"}}})
	authChange(ctx, t, root, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserDelete{UserDelete: &kvstorev1.UserDelete{Name: "bob"}}})
	// Every node refuses them once it applied the change: poll each.
	for _, nd := range c.Running() {
		one := nd.Client()
		for name, tok := range map[string]string{"a token from before a password change": aliceTok, "a deleted user's token": bobTok} {
			err := pollErr(ctx, func() error {
				_, err := one.KV.Get(ctx, withToken(&kvstorev1.GetRequest{Key: []byte("app/1"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}, tok))
				return err
			})
			wantCode(t, name+" on "+nd.Name(), err, connect.CodeUnauthenticated)
		}
	}
	// The client with the old password cannot get a new token; one with
	// the new password can.
	_, err = alice.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")}))
	wantCode(t, "the old password", err, connect.CodeUnauthenticated)

	// Restart every node: the state is on disk.
	for _, nd := range c.Nodes() {
		nd.Kill()
	}
	for _, nd := range c.Nodes() {
		if err := nd.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.Leader(ctx)
	alice2 := newClient("alice", "alicepw2", c.Endpoints())
	if _, err := alice2.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")})); err != nil {
		t.Fatalf("get after restarting every node: %v", err)
	}
	_, err = alice2.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("secret")}))
	wantCode(t, "get outside after the restart", err, connect.CodePermissionDenied)
	_, err = c.Client().KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")}))
	wantCode(t, "no credentials after the restart", err, connect.CodeUnauthenticated)

	// A node added later has the state: it joins (peer calls pass), then
	// checks credentials itself.
	nd := c.Add(ctx)
	if err := c.WaitMembers(ctx, 4); err != nil {
		t.Fatal(err)
	}
	late := newClient("alice", "alicepw2", []string{nd.Addr()})
	err = pollOK(ctx, func() error {
		_, err := late.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}))
		return err
	})
	if err != nil {
		t.Fatalf("alice on the new node: %v", err)
	}
	_, err = late.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("secret"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}))
	wantCode(t, "get outside on the new node", err, connect.CodePermissionDenied)
	_, err = nd.Client().KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")}))
	wantCode(t, "no credentials on the new node", err, connect.CodeUnauthenticated)

	// A backup needs root (it holds every key and the password hashes),
	// and a cluster restored from it has the same users and switch.
	file := filepath.Join(t.TempDir(), "backup.snap")
	if _, err := saveSnapshot(ctx, alice2, file); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("snapshot by a user without root: %v", err)
	}
	if _, err := saveSnapshot(ctx, newClient("root", "rootpw", c.Endpoints()), file); err != nil {
		t.Fatalf("snapshot by root: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "r1")
	if _, err := node.Restore(node.RestoreConfig{From: file, DataDir: dir, Name: "r1", Advertise: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	r1, err := node.Start(ctx, node.Config{DataDir: dir, Listen: "127.0.0.1:0", Name: "r1",
		HeartbeatTimeout: time.Second, ElectionTimeout: time.Second, FastGossip: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r1.Close(cctx)
	})
	if err := r1.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	restored := newClient("alice", "alicepw2", []string{r1.Addr()})
	if g, err := restored.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")})); err != nil || string(g.Msg.GetKv().GetValue()) != "one" {
		t.Fatalf("alice on the restored cluster: %v %v", g, err)
	}
	_, err = restored.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("secret")}))
	wantCode(t, "get outside on the restored cluster", err, connect.CodePermissionDenied)
	anonRestored, err := client.New([]string{r1.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer anonRestored.Close()
	_, err = anonRestored.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("app/1")}))
	wantCode(t, "no credentials on the restored cluster", err, connect.CodeUnauthenticated)
}

// pollErr calls f until it fails with anything but Unavailable (a node
// that has not applied a change yet answers as before), bounded by ctx.
func pollErr(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pollOK calls f until it succeeds, bounded by ctx (a new node serves what
// it applied so far).
func pollOK(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestAuthOverTLSCertificateUser: with TLS on, a client certificate's
// common name is the user (through the node's own TLS termination), and
// a client that claims to be a node (the headers nodes send one another,
// a forwarded call naming root) is still held to its user's permissions.
func TestAuthOverTLSCertificateUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(t, 1, nodetest.WithTLS())
	c.Leader(ctx)
	cl := c.Client() // shows the "client" certificate
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "root", Password: "rootpw"}}})
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "client", NoPassword: true}}})
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: "app"}}})
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{
		Role: "app", Permission: &kvstorev1.Permission{Type: kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE, Key: []byte("app/"), RangeEnd: []byte("app0")}}}})
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: "client", Role: "app"}}})
	authChange(ctx, t, cl, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}})

	if _, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("app/1"), Value: []byte("v")})); err != nil {
		t.Fatalf("put in the certificate user's prefix: %v", err)
	}
	_, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("other"), Value: []byte("v")}))
	wantCode(t, "put outside the certificate user's prefix", err, connect.CodePermissionDenied)

	// A certificate that names no user only opens the connection: its
	// calls are refused, naming it, but a password still works over it,
	// as in etcd (the README's secure cluster relies on this).
	webCert, webKey, err := c.PKI().Issue(tlsconf.Request{Kind: tlsconf.Client, Name: "web", ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	root, err := client.New(c.Endpoints(), client.WithTLS(c.PKI().ClientConfig()), client.WithCredentials("root", "rootpw"))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	authChange(ctx, t, root, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "bob", Password: "bobpw"}}})
	authChange(ctx, t, root, &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: "bob", Role: "app"}}})
	webTLS := c.PKI().ClientConfig()
	pair, err := tls.LoadX509KeyPair(webCert, webKey)
	if err != nil {
		t.Fatal(err)
	}
	webTLS.Certificates = []tls.Certificate{pair}
	for _, proto := range []string{client.ProtocolConnect, client.ProtocolGRPC} {
		web, err := client.New(c.Endpoints(), client.WithTLS(webTLS), client.WithProtocol(proto))
		if err != nil {
			t.Fatal(err)
		}
		defer web.Close()
		_, err = web.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("app/web"), Value: []byte("v")}))
		wantCode(t, proto+": put with a certificate naming no user", err, connect.CodeUnauthenticated)
		if want := `the client certificate names user "web", who does not exist`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: put with a certificate naming no user: %v; want it to say %q", proto, err, want)
		}
		bob, err := client.New(c.Endpoints(), client.WithTLS(webTLS), client.WithProtocol(proto), client.WithCredentials("bob", "bobpw"))
		if err != nil {
			t.Fatal(err)
		}
		defer bob.Close()
		if _, err := bob.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("app/bob"), Value: []byte(proto)})); err != nil {
			t.Fatalf("%s: put as bob (password) over a certificate naming no user: %v", proto, err)
		}
		_, err = bob.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("other"), Value: []byte("v")}))
		wantCode(t, proto+": bob's put outside his prefix", err, connect.CodePermissionDenied)
	}

	for name, opt := range map[string]connect.ClientOption{"connect": connect.WithProtoJSON(), "grpc": connect.WithGRPC()} {
		// A connection of its own per stack: the port gives each HTTP/2
		// connection to one stack, by its first request.
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.PKI().ClientConfig(), ForceAttemptHTTP2: true}}
		defer hc.CloseIdleConnections()
		kv := kvstorev1connect.NewKVServiceClient(hc, "https://"+c.Nodes()[0].Addr(), opt)
		for claim, headers := range map[string][][2]string{
			"peer":              {{"Kvstore-Peer", "n2"}},
			"cluster id":        {{"Kvstore-Cluster-Id", c.Nodes()[0].Node().ClusterID()}},
			"forwarded as root": {{"Kvstore-Forwarded-By", "n2"}, {"Kvstore-Forwarded-User", "root"}},
		} {
			req := connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("other"), Value: []byte("v")})
			for _, h := range headers {
				req.Header().Set(h[0], h[1])
			}
			_, err := kv.Put(ctx, req)
			wantCode(t, name+": put outside, claiming "+claim, err, connect.CodePermissionDenied)
		}
	}
}
