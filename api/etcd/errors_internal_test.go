package etcd

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/kvstore/kvstore/api"
)

// TestEtcdAuthErrors: etcd's answers to kvstore's refusals for want of a
// user: no credentials (clientv3 authenticates then), a bad token (it
// authenticates again), a client certificate naming no user (permission
// denied, as etcd answers: authenticating again would not help).
func TestEtcdAuthErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{connect.NewError(connect.CodeUnauthenticated, api.ErrNoCredentials), rpctypes.ErrGRPCUserEmpty},
		{connect.NewError(connect.CodeUnauthenticated, errors.New("authentication failed: invalid token")), rpctypes.ErrGRPCInvalidAuthToken},
		{connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%w: user \"web\"", api.ErrUnknownCertUser)), rpctypes.ErrGRPCPermissionDenied},
		{connect.NewError(connect.CodePermissionDenied, errors.New("permission denied")), rpctypes.ErrGRPCPermissionDenied},
	} {
		if got := etcdError(tc.err); got != tc.want {
			t.Errorf("etcdError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
