package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/auth"
	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// staticAuth is an AuthStore holding one state.
type staticAuth struct{ st *auth.State }

func (s staticAuth) Auth() *auth.State { return s.st }
func (staticAuth) AuthChange(context.Context, *kvstorev1.AuthChangeRequest) (*kvstorev1.AuthChangeResponse, error) {
	return nil, nil
}

func enabledState(t *testing.T) *auth.State {
	t.Helper()
	st := disabledState(t)
	next, err := auth.Apply(st, &raftcmdv1.AuthCommand{Change: &kvstorev1.AuthChangeRequest{Change: &kvstorev1.AuthChangeRequest_Enable{Enable: &kvstorev1.AuthEnable{}}}, SigningSeed: make([]byte, 32)}, 9)
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// disabledState is enabledState before the enabling.
func disabledState(t *testing.T) *auth.State {
	t.Helper()
	st := auth.NewState(nil)
	for i, c := range []*kvstorev1.AuthChangeRequest{
		{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "root", NoPassword: true}}},
		{Change: &kvstorev1.AuthChangeRequest_UserAdd{UserAdd: &kvstorev1.UserAdd{Name: "svc", NoPassword: true}}},
		{Change: &kvstorev1.AuthChangeRequest_RoleAdd{RoleAdd: &kvstorev1.RoleAdd{Name: "r"}}},
		{Change: &kvstorev1.AuthChangeRequest_RoleGrantPermission{RoleGrantPermission: &kvstorev1.RoleGrantPermission{Role: "r",
			Permission: &kvstorev1.Permission{Type: kvstorev1.PermissionType_PERMISSION_TYPE_READ, Key: []byte("svc/"), RangeEnd: []byte("svc0")}}}},
		{Change: &kvstorev1.AuthChangeRequest_UserGrantRole{UserGrantRole: &kvstorev1.UserGrantRole{User: "svc", Role: "r"}}},
	} {
		next, err := auth.Apply(st, &raftcmdv1.AuthCommand{Change: c}, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		st = next
	}
	return st
}

func chain(cn string) *tls.ConnectionState {
	return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: cn}}}}}
}

// TestClientCertUser: a verified client certificate's common name is the
// user; an unverified one (PeerCertificates only) names nobody.
func TestClientCertUser(t *testing.T) {
	az := authorizer{store: staticAuth{enabledState(t)}, ttl: time.Minute}
	get := &kvstorev1.GetRequest{Key: []byte("svc/a")}
	try := func(cs *tls.ConnectionState, req *kvstorev1.GetRequest) error {
		h := http.Header{}
		ctx := context.Background()
		if cs != nil {
			ctx = context.WithValue(ctx, tlsStateKey{}, cs)
		}
		ctx, err := az.identify(ctx, connectCredentials(ctx, h))
		if err != nil {
			return err
		}
		return az.authorize(ctx, h, false, needsOf(req)...)
	}
	if err := try(chain("svc"), get); err != nil {
		t.Fatalf("svc by certificate, in its range: %v", err)
	}
	if err := try(chain("svc"), &kvstorev1.GetRequest{Key: []byte("other")}); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("svc by certificate, outside: %v", err)
	}
	if err := try(chain("nobody"), get); connect.CodeOf(err) != connect.CodeUnauthenticated || !errors.Is(err, ErrUnknownCertUser) {
		t.Fatalf("a certificate naming no user: %v", err)
	}
	// ... which does not stop it from authenticating: identify lets it in.
	ctx := context.WithValue(context.Background(), tlsStateKey{}, chain("nobody"))
	if _, err := az.identify(ctx, connectCredentials(ctx, http.Header{})); err != nil {
		t.Fatalf("identify, a certificate naming no user: %v", err)
	}
	unverified := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: "root"}}}}
	if err := try(unverified, get); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("an unverified certificate: %v", err)
	}
	if err := try(nil, get); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no credentials: %v", err)
	}
	// A token wins over the certificate.
	tok, _, err := az.state().Token("root", time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"Authorization": {"Bearer " + tok}}
	ctx = context.WithValue(context.Background(), tlsStateKey{}, chain("svc"))
	ctx, err = az.identify(ctx, connectCredentials(ctx, h))
	if err != nil {
		t.Fatal(err)
	}
	if err := az.authorize(ctx, h, true); err != nil {
		t.Fatalf("root by token over svc's certificate: %v", err)
	}
}

// varAuth is an AuthStore whose state the test changes.
type varAuth struct{ st *auth.State }

func (s *varAuth) Auth() *auth.State { return s.st }
func (*varAuth) AuthChange(context.Context, *kvstorev1.AuthChangeRequest) (*kvstorev1.AuthChangeResponse, error) {
	return nil, nil
}

// TestCredentialsOnANodeThatLags: right after authentication is enabled, a
// node that has not applied the enabling yet gets a call with a token (made
// by a node that has) or a client certificate. It keeps them unchecked:
// its forwarded write names them to the leader, which checks them, and a
// read it checks again once read (auth on by then) finds the user. Before,
// the leader was told "no user" and refused a client with valid
// credentials, and so did the read's second check.
func TestCredentialsOnANodeThatLags(t *testing.T) {
	on := enabledState(t)
	tok, _, err := on.Token("svc", time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	forged := tok[:len(tok)-4] + "AAAA"
	leader := authorizer{store: staticAuth{on}, ttl: time.Minute}
	in := &kvstorev1.GetRequest{Key: []byte("svc/a")}
	out := &kvstorev1.GetRequest{Key: []byte("other")}
	for _, tc := range []struct {
		name      string
		h         http.Header
		cs        *tls.ConnectionState
		forwarded string
		in, out   connect.Code // the leader's answers, inside and outside svc's range
	}{
		{"token", http.Header{"Authorization": {"Bearer " + tok}}, nil, forwardedTokenPrefix + tok, 0, connect.CodePermissionDenied},
		{"etcd's token", http.Header{"Token": {tok}}, nil, forwardedTokenPrefix + tok, 0, connect.CodePermissionDenied},
		{"forged token", http.Header{"Authorization": {"Bearer " + forged}}, nil, forwardedTokenPrefix + forged, connect.CodeUnauthenticated, connect.CodeUnauthenticated},
		{"certificate", http.Header{}, chain("svc"), "svc", 0, connect.CodePermissionDenied},
		{"certificate naming no user", http.Header{}, chain("nobody"), "nobody", connect.CodeUnauthenticated, connect.CodeUnauthenticated},
		{"nothing", http.Header{}, nil, noUser, connect.CodeUnauthenticated, connect.CodeUnauthenticated},
	} {
		lagging := &varAuth{disabledState(t)}
		follower := authorizer{store: lagging, ttl: time.Minute}
		ctx := context.Background()
		if tc.cs != nil {
			ctx = context.WithValue(ctx, tlsStateKey{}, tc.cs)
		}
		ctx, err := follower.identify(ctx, connectCredentials(ctx, tc.h))
		if err != nil {
			t.Fatalf("%s: identify with auth off: %v", tc.name, err)
		}
		if err := follower.authorize(ctx, tc.h, false, needsOf(out)...); err != nil {
			t.Fatalf("%s: authorize with auth off: %v", tc.name, err)
		}
		if got := forwardedUser(ctx); got != tc.forwarded {
			t.Fatalf("%s: forwarded as %q, want %q", tc.name, got, tc.forwarded)
		}
		// The leader, auth on, checks the forwarded call.
		fh := http.Header{forwardedHeader: {"n2"}, forwardedUserHeader: {tc.forwarded}}
		peer := withCaller(context.Background(), caller{peer: true})
		for _, c := range []struct {
			req  *kvstorev1.GetRequest
			want connect.Code
		}{{in, tc.in}, {out, tc.out}} {
			if err := leader.authorize(peer, fh, false, needsOf(c.req)...); codeOrOK(err) != c.want {
				t.Errorf("%s: the leader on %q: %v, want %v", tc.name, c.req.GetKey(), err, c.want)
			}
		}
		// The follower applies the enabling; the read's second check.
		lagging.st = on
		for _, c := range []struct {
			req  *kvstorev1.GetRequest
			want connect.Code
		}{{in, tc.in}, {out, tc.out}} {
			if err := follower.authorize(ctx, tc.h, false, needsOf(c.req)...); codeOrOK(err) != c.want {
				t.Errorf("%s: checked again on %q once on: %v, want %v", tc.name, c.req.GetKey(), err, c.want)
			}
		}
	}
}

// codeOrOK is err's code, 0 for nil.
func codeOrOK(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

// TestNeedsOf: a txn needs every compare and every op of both branches.
func TestNeedsOf(t *testing.T) {
	txn := &kvstorev1.TxnRequest{
		Compare: []*kvstorev1.Compare{{Key: []byte("c")}},
		Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: []byte("p"), PrevKv: true}}}},
		Failure: []*kvstorev1.RequestOp{
			{Request: &kvstorev1.RequestOp_Delete{Delete: &kvstorev1.DeleteRequest{Key: []byte("d/"), Prefix: true}}},
			{Request: &kvstorev1.RequestOp_Txn{Txn: &kvstorev1.TxnRequest{Success: []*kvstorev1.RequestOp{
				{Request: &kvstorev1.RequestOp_Range{Range: &kvstorev1.RangeRequest{Key: []byte("r"), RangeEnd: []byte("s")}}}}}}},
		},
	}
	got := needsOf(txn)
	want := []auth.Need{
		{Access: auth.Read, Key: []byte("c")},
		{Access: auth.Write | auth.Read, Key: []byte("p")},
		{Access: auth.Write, Key: []byte("d/"), End: []byte("d0")},
		{Access: auth.Read, Key: []byte("r"), End: []byte("s")},
	}
	if len(got) != len(want) {
		t.Fatalf("needs %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Access != want[i].Access || string(got[i].Key) != string(want[i].Key) || string(got[i].End) != string(want[i].End) {
			t.Errorf("need %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// leaderAuth is a leader's AuthService that answers Authenticate and
// keeps the forwarded header of what it got.
type leaderAuth struct {
	kvstorev1connect.UnimplementedAuthServiceHandler
	by chan string
}

func (l *leaderAuth) Authenticate(_ context.Context, req *connect.Request[kvstorev1.AuthenticateRequest]) (*connect.Response[kvstorev1.AuthenticateResponse], error) {
	l.by <- req.Header().Get(forwardedHeader)
	return connect.NewResponse(&kvstorev1.AuthenticateResponse{Token: "token of " + req.Msg.GetName()}), nil
}

// TestAuthenticateOnANodeThatLags: Authenticate on a node that has not
// applied the enabling yet goes to the leader, instead of failing with
// "authentication is off"; on the leader itself, that is the answer.
func TestAuthenticateOnANodeThatLags(t *testing.T) {
	leader := &leaderAuth{by: make(chan string, 1)}
	mux := http.NewServeMux()
	mux.Handle(kvstorev1connect.NewAuthServiceHandler(leader))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	peers := NewPeers("n2", PeerOptions{})
	defer peers.Close()
	leaderAddr := strings.TrimPrefix(srv.URL, "http://")
	lagging := &authService{
		router: router{peers: peers, leader: func() (string, string) { return "n1", leaderAddr }},
		authz:  authorizer{store: staticAuth{disabledState(t)}, ttl: time.Minute},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := lagging.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: "svc", Password: "pw"}))
	if err != nil || resp.Msg.GetToken() != "token of svc" {
		t.Fatalf("Authenticate on a node that lags: %v, %v; want the leader's token", resp, err)
	}
	if by := <-leader.by; by != "n2" {
		t.Errorf("the leader got the call forwarded by %q, want n2", by)
	}
	lagging.router.leader = func() (string, string) { return "n2", "127.0.0.1:1" }
	_, err = lagging.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: "svc", Password: "pw"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("Authenticate on the leader with authentication off: %v, want failed_precondition", err)
	}
}
