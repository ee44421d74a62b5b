package auth

import (
	"bytes"
	"fmt"
	"slices"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Access is what a request does to keys.
type Access uint8

const (
	// Read reads keys (gets, ranges, compares, watches, prev_kv).
	Read Access = 1 << iota
	// Write changes keys (puts, deletes, lease revokes).
	Write
)

// Need is one range of keys a request touches and what it does there.
// End as in RangeRequest: empty, the single key Key; "\x00", every key
// from Key on; otherwise [Key, End).
type Need struct {
	Access Access
	Key    []byte
	End    []byte
}

func isInf(end []byte) bool { return len(end) == 1 && end[0] == 0 }

// Check tells whether user may do everything in needs: nil, or an error
// matching ErrPermissionDenied (or ErrUnauthenticated for a user the state
// does not know). A root user may do anything; with authentication off,
// anyone may.
func (s *State) Check(user string, needs ...Need) error {
	if !s.Enabled() {
		return nil
	}
	u := s.User(user)
	if u == nil {
		return fmt.Errorf("%w: no user %q", ErrUnauthenticated, user)
	}
	if slices.Contains(u.GetRoles(), RootRole) {
		return nil
	}
	var perms []*kvstorev1.Permission
	for _, name := range u.GetRoles() {
		perms = append(perms, s.roles[name].GetPermissions()...)
	}
	for _, n := range needs {
		for _, a := range []Access{Read, Write} {
			if n.Access&a != 0 && !covered(perms, a, n.Key, n.End) {
				return fmt.Errorf("%w: user %q may not %s %s", ErrPermissionDenied, user, verb(a), describeRange(n.Key, n.End))
			}
		}
	}
	return nil
}

// CheckRoot tells whether user may change users, roles and the cluster:
// nil while authentication is off or user has the root role.
func (s *State) CheckRoot(user string) error {
	if !s.Enabled() {
		return nil
	}
	if s.User(user) == nil {
		return fmt.Errorf("%w: no user %q", ErrUnauthenticated, user)
	}
	if !s.IsRoot(user) {
		return fmt.Errorf("%w: user %q does not have the root role", ErrPermissionDenied, user)
	}
	return nil
}

func verb(a Access) string {
	if a == Write {
		return "write"
	}
	return "read"
}

func grants(t kvstorev1.PermissionType, a Access) bool {
	switch t {
	case kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE:
		return true
	case kvstorev1.PermissionType_PERMISSION_TYPE_READ:
		return a == Read
	case kvstorev1.PermissionType_PERMISSION_TYPE_WRITE:
		return a == Write
	}
	return false
}

// bound is a range's exclusive end; inf: none.
type bound struct {
	key []byte
	inf bool
}

// endOf turns a RangeRequest-style end into an exclusive bound: the
// single key k is [k, k+"\x00").
func endOf(key, end []byte) bound {
	switch {
	case isInf(end):
		return bound{inf: true}
	case len(end) == 0:
		return bound{key: append(bytes.Clone(key), 0)}
	}
	return bound{key: end}
}

// covered tells whether the permissions of kind a, taken together, cover
// every key of [key, end).
func covered(perms []*kvstorev1.Permission, a Access, key, end []byte) bool {
	want := endOf(key, end)
	if !want.inf && bytes.Compare(want.key, key) <= 0 {
		// An empty range touches no key.
		return true
	}
	type span struct {
		start []byte
		end   bound
	}
	var spans []span
	for _, p := range perms {
		if grants(p.GetType(), a) {
			spans = append(spans, span{p.GetKey(), endOf(p.GetKey(), p.GetRangeEnd())})
		}
	}
	slices.SortFunc(spans, func(x, y span) int { return bytes.Compare(x.start, y.start) })
	// Sweep: cur is the first key not yet known covered.
	cur := key
	for _, sp := range spans {
		if bytes.Compare(sp.start, cur) > 0 {
			break
		}
		if sp.end.inf {
			return true
		}
		if bytes.Compare(sp.end.key, cur) > 0 {
			cur = sp.end.key
			if !want.inf && bytes.Compare(cur, want.key) >= 0 {
				return true
			}
		}
	}
	return false
}
