package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kvstore/kvstore/auth"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
	"github.com/kvstore/kvstore/storage"
)

// Authentication and permissions (package auth has the model).
//
//   - Who calls is found once per call, by the one rule chain (rules.go,
//     identify) for both stacks and both faces: a peer (a call that
//     carries peerHeader, ClusterIDHeader or forwardedHeader: another
//     node, whose client was checked where its call arrived; with TLS on
//     it counts only over a connection with a verified peer certificate,
//     Options.IsPeer), a user named by a token (the
//     `Authorization: Bearer` header, or `token` metadata as etcd's
//     clients send it) or by the verified client certificate's common
//     name, or nobody. Bad credentials are refused there, Unauthenticated;
//     a certificate naming a user who does not exist is not (it may carry
//     a password login), and makes its call a nobody's that authorize
//     refuses naming the certificate.
//   - What a call may touch is checked by the handlers both stacks and
//     the etcd face share, before anything is read or proposed
//     (authorize, with the needs of each request from needsOf): every key
//     and range it touches, each compare and op of a transaction (both
//     branches), a watch's range, a revoked lease's keys; cluster
//     changes, compaction, snapshots and user changes need the root role.
//     Denied: PermissionDenied, naming only what the caller asked for;
//     no credentials: Unauthenticated. Nothing is written on a refusal.
//   - Reads are checked again once read, against the state as of the
//     read (a linearizable read waits until the node applied everything
//     committed before it, auth changes included).
//   - A client's call forwarded to the leader carries who the client was
//     (forwardedUserHeader, ForwardedWrite.user), and the leader checks
//     it again against its own state: a follower that has not applied an
//     auth change yet (a new node, one that lags) cannot let a write
//     through that the leader would refuse. Nor refuse one the leader
//     would let through: a node that has not applied the enabling yet
//     keeps what its client presented, unchecked, and names it to the
//     leader (a token, forwardedTokenPrefix) or checks it once it has
//     (a read's second check); it sends Authenticate on to the leader. Calls nodes make themselves
//     carry no user and are not checked. Without TLS nothing proves a
//     call is a node's: anyone who can reach the port can claim to be
//     one, and speak raft too. Authentication is a boundary only with TLS
//     on, as etcd's is with peer TLS.

// AuthStore is the replicated authentication state.
type AuthStore interface {
	// Auth returns the state as of the node's applied index.
	Auth() *auth.State
	// AuthChange proposes a change (passwords hashed); it needs the leader.
	AuthChange(context.Context, *kvstorev1.AuthChangeRequest) (*kvstorev1.AuthChangeResponse, error)
}

// ErrNoCredentials refuses, Unauthenticated, a call that needs a user
// but came with no credentials.
var ErrNoCredentials = errors.New("authentication is on: this call needs a token (authenticate first) or a client certificate")

// etcdInvalidToken is etcd's answer to a bad token (rpctypes'
// ErrGRPCInvalidAuthToken), on which clientv3 authenticates again: the
// etcd face's calls get it from identify instead of ours.
var etcdInvalidToken = status.Error(codes.Unauthenticated, "etcdserver: invalid auth token")

// identifyError is identify's refusal as a grpc-go call gets it.
func identifyError(method string, err error) error {
	if strings.HasPrefix(method, "/etcdserverpb.") {
		return etcdInvalidToken
	}
	return grpcError(err, func(metadata.MD) {})
}

// forwardedUserHeader carries, on a client's call forwarded to the
// leader, who the client was: a user, or noUser.
const forwardedUserHeader = "Kvstore-Forwarded-User"

// noUser is forwardedUserHeader's value for a client without a user (not
// a valid user name: names have no colon).
const noUser = ":none"

// forwardedTokenPrefix starts forwardedUserHeader's value for a client
// that presented a token the forwarding node could not check (it had not
// applied the enabling of authentication yet): the token follows, for the
// leader to check.
const forwardedTokenPrefix = ":token:"

// forwardedUser is what a forwarded call says of its client: "" for a
// node's own call.
func forwardedUser(ctx context.Context) string {
	c, ok := callerOf(ctx)
	switch {
	case c.peer:
		return ""
	case !ok:
		return noUser
	case c.user != "":
		return c.user
	case c.token != "":
		return forwardedTokenPrefix + c.token
	case c.cert != "":
		// Authentication was off here (with it on, authorize refused a
		// certificate naming no user before this): the certificate was
		// verified by the handshake, its name is the user to check.
		return c.cert
	}
	return noUser
}

// DefaultAuthTokenTTL is how long a token works, as etcd's default.
const DefaultAuthTokenTTL = 5 * time.Minute

// AuthHeader carries a token over HTTP (Connect, gRPC-Web, JSON) as
// "Bearer TOKEN"; TokenMetadata carries it bare, as etcd's clients send it.
const (
	AuthHeader    = "Authorization"
	TokenMetadata = "token"
)

// caller is who makes a call, as identify found.
type caller struct {
	user string // "" with peer or nobody
	peer bool
	// token is a token presented while authentication was off where the
	// call arrived, kept unchecked (user is then ""): the node may only
	// lag behind the enabling, so authorize checks it against a state
	// with authentication on, or the leader a forwarded write is checked
	// by does.
	token string
	// cert is the user a verified client certificate names, when not
	// (yet) found a user: authentication was off, or no such user
	// exists. The call is then a nobody's, refused by authorize naming
	// the certificate, but it may still authenticate with a password, as
	// in etcd, where with --client-cert-auth the certificate of a client
	// that logs in only opens the connection.
	cert string
}

type callerKey struct{}

func withCaller(ctx context.Context, c caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

func callerOf(ctx context.Context) (caller, bool) {
	c, ok := ctx.Value(callerKey{}).(caller)
	return c, ok
}

// authorizer checks calls against the authentication state; its zero
// value (no store) lets every call through.
type authorizer struct {
	store  AuthStore
	ttl    time.Duration
	isPeer func(context.Context) bool // Options.IsPeer
}

func (a authorizer) state() *auth.State {
	if a.store == nil {
		return nil
	}
	return a.store.Auth()
}

// presented is what a call presents; any may be empty.
type presented struct {
	token string
	tls   *tls.ConnectionState
	peer  bool
}

// identify finds who makes a call: a peer, a user, or nobody (ok, as long
// as the call needs no permission). Credentials that do not check out
// are refused, Unauthenticated, whatever the call.
func (a authorizer) identify(ctx context.Context, cr presented) (context.Context, error) {
	st := a.state()
	if cr.peer && (a.isPeer == nil || a.isPeer(ctx)) {
		return withCaller(ctx, caller{peer: true}), nil
	}
	if !st.Enabled() {
		// Perhaps only here, until this node applies the enabling: keep
		// what the call presented, unchecked (see caller).
		if c := (caller{token: cr.token, cert: certUser(cr.tls)}); c != (caller{}) {
			return withCaller(ctx, c), nil
		}
		return ctx, nil
	}
	if cr.token != "" {
		user, err := st.Verify(cr.token, time.Now())
		if err != nil {
			return ctx, connect.NewError(connect.CodeUnauthenticated, err)
		}
		return withCaller(ctx, caller{user: user}), nil
	}
	if user := certUser(cr.tls); user != "" {
		if st.User(user) == nil {
			return withCaller(ctx, caller{cert: user}), nil
		}
		return withCaller(ctx, caller{user: user}), nil
	}
	return ctx, nil
}

// ErrUnknownCertUser is what a call that needs a user is refused with,
// Unauthenticated, when it came with no token but a client certificate
// naming a user who does not exist (errors.Is matches it, and
// auth.ErrUnauthenticated).
var ErrUnknownCertUser = errors.New("the client certificate names a user who does not exist")

type unknownCertError string

func (e unknownCertError) Error() string {
	return fmt.Sprintf("%v: the client certificate names user %q, who does not exist", auth.ErrUnauthenticated, string(e))
}

func (e unknownCertError) Is(target error) bool {
	return target == ErrUnknownCertUser || target == auth.ErrUnauthenticated
}

// certUser is the user a verified client certificate names: its common
// name; "" without one. Only chains the TLS handshake verified count.
func certUser(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}

// bearer takes the token out of an Authorization header value, or a bare
// token header.
func bearer(authorization, token string) string {
	if v, ok := strings.CutPrefix(authorization, "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return token
}

// connectCredentials are a Connect call's.
func connectCredentials(ctx context.Context, h http.Header) presented {
	return presented{
		token: bearer(h.Get(AuthHeader), h.Get(TokenMetadata)),
		tls:   TLSState(ctx),
		peer:  h.Get(peerHeader) != "" || h.Get(ClusterIDHeader) != "" || isForwarded(h),
	}
}

// grpcCredentials are a grpc-go call's.
func grpcCredentials(ctx context.Context) presented {
	return presented{
		token: bearer(mdValue(ctx, strings.ToLower(AuthHeader)), mdValue(ctx, TokenMetadata)),
		tls:   TLSState(ctx),
		peer:  mdValue(ctx, peerMDKey) != "" || mdValue(ctx, clusterIDMDKey) != "" || mdValue(ctx, forwardedMDKey) != "",
	}
}

// authorize checks that the caller may do everything in needs (root: it
// needs the root role); h is the call's header (a forwarded call is a
// peer's). nil while authentication is off.
func (a authorizer) authorize(ctx context.Context, h http.Header, root bool, needs ...auth.Need) error {
	st := a.state()
	if !st.Enabled() {
		return nil
	}
	c, _ := callerOf(ctx)
	if c.peer && isForwarded(h) {
		// The follower's client, checked again here.
		switch u := h.Get(forwardedUserHeader); {
		case u == "":
			return nil
		case u == noUser:
			c = caller{}
		case strings.HasPrefix(u, forwardedTokenPrefix):
			c = caller{token: strings.TrimPrefix(u, forwardedTokenPrefix)}
		default:
			c = caller{user: u}
		}
	} else if c.peer {
		return nil
	}
	c, err := resolve(st, c)
	if err != nil {
		return err
	}
	if c.user == "" && c.cert != "" {
		return connect.NewError(connect.CodeUnauthenticated, unknownCertError(c.cert))
	}
	if c.user == "" {
		return connect.NewError(connect.CodeUnauthenticated, ErrNoCredentials)
	}
	if root {
		err = st.CheckRoot(c.user)
	} else {
		err = st.Check(c.user, needs...)
	}
	if err != nil {
		return authError(err)
	}
	return nil
}

// resolve finds the user of what a call presented while authentication
// was off where it arrived (identify kept it unchecked), now that st has
// it on; and of a certificate whose user did not exist at identify, if
// made since.
func resolve(st *auth.State, c caller) (caller, error) {
	switch {
	case c.peer || c.user != "":
	case c.token != "":
		user, err := st.Verify(c.token, time.Now())
		if err != nil {
			return c, connect.NewError(connect.CodeUnauthenticated, err)
		}
		return caller{user: user}, nil
	case c.cert != "" && st.User(c.cert) != nil:
		return caller{user: c.cert}, nil
	}
	return c, nil
}

// authError turns an auth error into the call's code.
func authError(err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, auth.ErrPermissionDenied):
		code = connect.CodePermissionDenied
	case errors.Is(err, auth.ErrUnauthenticated):
		code = connect.CodeUnauthenticated
	case errors.Is(err, auth.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, auth.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, auth.ErrExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, auth.ErrFailedPrecondition):
		code = connect.CodeFailedPrecondition
	}
	return connect.NewError(code, err)
}

// spanNeed is a need over key, range_end and prefix as requests spell
// them.
func spanNeed(a auth.Access, key, end []byte, prefix bool) auth.Need {
	if prefix {
		end = storage.PrefixEnd(key)
	}
	return auth.Need{Access: a, Key: key, End: end}
}

// needsOf lists what a request touches: the one table of what each
// key-value request needs.
func needsOf(req any) []auth.Need {
	switch r := req.(type) {
	case *kvstorev1.PutRequest:
		n := []auth.Need{{Access: auth.Write, Key: r.GetKey()}}
		if r.GetPrevKv() {
			n[0].Access |= auth.Read
		}
		return n
	case *kvstorev1.GetRequest:
		return []auth.Need{{Access: auth.Read, Key: r.GetKey()}}
	case *kvstorev1.RangeRequest:
		return []auth.Need{spanNeed(auth.Read, r.GetKey(), r.GetRangeEnd(), r.GetPrefix())}
	case *kvstorev1.DeleteRequest:
		a := auth.Write
		if r.GetPrevKv() {
			a |= auth.Read
		}
		return []auth.Need{spanNeed(a, r.GetKey(), r.GetRangeEnd(), r.GetPrefix())}
	case *kvstorev1.WatchRequest:
		return []auth.Need{spanNeed(auth.Read, r.GetKey(), r.GetRangeEnd(), r.GetPrefix())}
	case *kvstorev1.TxnRequest:
		var n []auth.Need
		for _, c := range r.GetCompare() {
			n = append(n, auth.Need{Access: auth.Read, Key: c.GetKey(), End: c.GetRangeEnd()})
		}
		for _, ops := range [][]*kvstorev1.RequestOp{r.GetSuccess(), r.GetFailure()} {
			for _, op := range ops {
				switch o := op.GetRequest().(type) {
				case *kvstorev1.RequestOp_Put:
					n = append(n, needsOf(o.Put)...)
				case *kvstorev1.RequestOp_Delete:
					n = append(n, needsOf(o.Delete)...)
				case *kvstorev1.RequestOp_Get:
					n = append(n, needsOf(o.Get)...)
				case *kvstorev1.RequestOp_Range:
					n = append(n, needsOf(o.Range)...)
				case *kvstorev1.RequestOp_Txn:
					n = append(n, needsOf(o.Txn)...)
				}
			}
		}
		return n
	}
	return nil
}

// authService serves AuthService.
type authService struct {
	router
	authz authorizer
	store Store
}

func (s *authService) enabled() error {
	if s.authz.store == nil {
		return connect.NewError(connect.CodeUnimplemented, errors.New("this node keeps no users"))
	}
	return nil
}

func (s *authService) Authenticate(ctx context.Context, creq *connect.Request[kvstorev1.AuthenticateRequest]) (*connect.Response[kvstorev1.AuthenticateResponse], error) {
	if err := s.enabled(); err != nil {
		return nil, err
	}
	st := s.authz.state()
	if !st.Enabled() {
		// Perhaps only here, right after it was enabled: the leader knows.
		if fwd, ok, err := forward(ctx, &s.router, creq, (*Peers).authClient, kvstorev1connect.AuthServiceClient.Authenticate); ok {
			return fwd, err
		}
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("authentication is off"))
	}
	if err := st.Login(creq.Msg.GetName(), creq.Msg.GetPassword()); err != nil {
		return nil, authError(err)
	}
	tok, exp, err := st.Token(creq.Msg.GetName(), time.Now(), s.authz.ttl)
	if err != nil {
		return nil, authError(err)
	}
	return connect.NewResponse(&kvstorev1.AuthenticateResponse{Header: s.store.Header(0), Token: tok, ExpiresUnix: exp.Unix()}), nil
}

func (s *authService) AuthStatus(ctx context.Context, _ *connect.Request[kvstorev1.AuthStatusRequest]) (*connect.Response[kvstorev1.AuthStatusResponse], error) {
	if err := s.enabled(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvstorev1.AuthStatusResponse{Header: s.store.Header(0), Enabled: s.authz.state().Enabled()}), nil
}

func (s *authService) AuthList(ctx context.Context, creq *connect.Request[kvstorev1.AuthListRequest]) (*connect.Response[kvstorev1.AuthListResponse], error) {
	if err := s.enabled(); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	st := s.authz.state()
	users, roles := st.List()
	return connect.NewResponse(&kvstorev1.AuthListResponse{Header: s.store.Header(0), Enabled: st.Enabled(), Users: users, Roles: roles}), nil
}

// AuthChange hashes passwords here, where the call arrives, so that only
// hashes travel on and reach the raft log.
func (s *authService) AuthChange(ctx context.Context, creq *connect.Request[kvstorev1.AuthChangeRequest]) (*connect.Response[kvstorev1.AuthChangeResponse], error) {
	if err := s.enabled(); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), true); err != nil {
		return nil, err
	}
	req := creq.Msg
	hash := func(password *string, h *[]byte) error {
		switch {
		case *password != "":
			out, err := auth.HashPassword(*password)
			if err != nil {
				return err
			}
			*password, *h = "", out
		case len(*h) > 0:
			return auth.ValidHash(*h)
		}
		return nil
	}
	var err error
	switch c := req.GetChange().(type) {
	case nil:
		return nil, invalid("auth change: no change given")
	case *kvstorev1.AuthChangeRequest_UserAdd:
		if err = auth.ValidName("user", c.UserAdd.GetName()); err == nil {
			err = hash(&c.UserAdd.Password, &c.UserAdd.PasswordHash)
		}
		if err == nil && !c.UserAdd.GetNoPassword() && len(c.UserAdd.GetPasswordHash()) == 0 {
			err = fmt.Errorf("%w: user %q needs a password (or no_password)", auth.ErrInvalid, c.UserAdd.GetName())
		}
	case *kvstorev1.AuthChangeRequest_UserChangePassword:
		err = hash(&c.UserChangePassword.Password, &c.UserChangePassword.PasswordHash)
		if err == nil && len(c.UserChangePassword.GetPasswordHash()) == 0 {
			err = fmt.Errorf("%w: no new password", auth.ErrInvalid)
		}
	case *kvstorev1.AuthChangeRequest_RoleGrantPermission:
		err = auth.ValidPermission(c.RoleGrantPermission.GetPermission())
	}
	if err != nil {
		return nil, authError(err)
	}
	return write(ctx, &s.router, creq, "auth change", s.authz.store.AuthChange, (*Peers).authClient, kvstorev1connect.AuthServiceClient.AuthChange)
}
