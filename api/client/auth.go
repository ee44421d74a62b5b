package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// WithCredentials makes the Client authenticate as user with password:
// it asks for a token on its first call, sends it with every call (the
// Authorization header), and asks for a new one before it expires and
// when a node refuses it (the user's password changed, authentication
// was enabled again). While authentication is off on the cluster, calls
// go without a token.
func WithCredentials(user, password string) Option {
	return func(o *options) { o.user, o.password = user, password }
}

// refreshBefore is how long before its expiry a token is replaced.
const refreshBefore = 30 * time.Second

// tokens gets, keeps and renews a Client's token.
type tokens struct {
	c              *Client
	user, password string

	mu      sync.Mutex
	token   string // "": none (authentication off, or not asked yet)
	expires time.Time
	off     bool // the cluster said authentication is off
}

// get returns the token to send, asking for one when there is none or it
// is about to expire; "" while authentication is off.
func (t *tokens) get(ctx context.Context, stale string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token != "" && t.token != stale && time.Until(t.expires) > refreshBefore {
		return t.token, nil
	}
	if t.off && stale == "" {
		return "", nil
	}
	resp, err := t.c.Auth.Authenticate(ctx, connect.NewRequest(&kvstorev1.AuthenticateRequest{Name: t.user, Password: t.password}))
	if connect.CodeOf(err) == connect.CodeFailedPrecondition {
		// Authentication is off: send none until a node refuses that.
		t.token, t.off = "", true
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("authenticate as %q: %w", t.user, err)
	}
	t.token, t.off = resp.Msg.GetToken(), false
	t.expires = time.Unix(resp.Msg.GetExpiresUnix(), 0)
	return t.token, nil
}

// interceptor sends the token with every call but Authenticate, and
// repeats a unary call once with a new token when the one it sent was
// refused.
type tokenInterceptor struct{ t *tokens }

func isAuthenticate(spec connect.Spec) bool {
	return spec.Procedure == kvstorev1connect.AuthServiceAuthenticateProcedure
}

func setToken(h http.Header, tok string) {
	if tok == "" {
		h.Del("Authorization")
		return
	}
	h.Set("Authorization", "Bearer "+tok)
}

func (i tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if isAuthenticate(req.Spec()) {
			return next(ctx, req)
		}
		tok, err := i.t.get(ctx, "")
		if err != nil {
			return nil, err
		}
		setToken(req.Header(), tok)
		resp, err := next(ctx, req)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			return resp, err
		}
		// The token expired, was ended by a password change, or none was
		// sent because authentication was off: ask again, once.
		fresh, ferr := i.t.get(ctx, staleOr(tok))
		if ferr != nil || fresh == tok {
			return resp, errors.Join(err, ferr)
		}
		setToken(req.Header(), fresh)
		return next(ctx, req)
	}
}

// staleOr names the token to replace; a marker when none was sent, so
// that get asks for one even while it believes authentication is off.
func staleOr(tok string) string {
	if tok == "" {
		return "\x00none"
	}
	return tok
}

func (i tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		// A stream cannot be repeated: it takes the token there is now.
		if tok, err := i.t.get(ctx, ""); err == nil {
			setToken(conn.RequestHeader(), tok)
		}
		return conn
	}
}

func (i tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// authFailover is the AuthService with failover: reads and Authenticate
// on any node that answers; changes as writes (see Client).
type authFailover struct{ c *Client }

// Authenticate calls AuthService.Authenticate, failing over on
// CodeUnavailable.
func (f authFailover) Authenticate(ctx context.Context, req *connect.Request[kvstorev1.AuthenticateRequest]) (*connect.Response[kvstorev1.AuthenticateResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AuthenticateRequest]) (*connect.Response[kvstorev1.AuthenticateResponse], error) {
		return e.auth.Authenticate(ctx, r)
	})
}

// AuthStatus calls AuthService.AuthStatus, failing over on
// CodeUnavailable.
func (f authFailover) AuthStatus(ctx context.Context, req *connect.Request[kvstorev1.AuthStatusRequest]) (*connect.Response[kvstorev1.AuthStatusResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AuthStatusRequest]) (*connect.Response[kvstorev1.AuthStatusResponse], error) {
		return e.auth.AuthStatus(ctx, r)
	})
}

// AuthList calls AuthService.AuthList, failing over on CodeUnavailable.
func (f authFailover) AuthList(ctx context.Context, req *connect.Request[kvstorev1.AuthListRequest]) (*connect.Response[kvstorev1.AuthListResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AuthListRequest]) (*connect.Response[kvstorev1.AuthListResponse], error) {
		return e.auth.AuthList(ctx, r)
	})
}

// AuthChange calls AuthService.AuthChange, failing over as writes do.
func (f authFailover) AuthChange(ctx context.Context, req *connect.Request[kvstorev1.AuthChangeRequest]) (*connect.Response[kvstorev1.AuthChangeResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.AuthChangeRequest]) (*connect.Response[kvstorev1.AuthChangeResponse], error) {
		return e.auth.AuthChange(ctx, r)
	})
}
