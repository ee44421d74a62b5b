package auth

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"google.golang.org/protobuf/proto"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// RootUser and RootRole are etcd's: the user enabling needs, and the role
// that allows everything.
const (
	RootUser = "root"
	RootRole = "root"
)

// maxNameLen bounds user and role names.
const maxNameLen = 128

var (
	// ErrPermissionDenied refuses a call its user may not make.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnauthenticated refuses a call without valid credentials.
	ErrUnauthenticated = errors.New("authentication failed")
	// ErrInvalid refuses a malformed change (a bad name, a bad permission).
	ErrInvalid = errors.New("invalid auth change")
	// ErrNotFound refuses a change naming a user or role that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists refuses adding a user or role that exists.
	ErrExists = errors.New("already exists")
	// ErrFailedPrecondition refuses a change the state does not allow now
	// (enabling without root, deleting root while enabled).
	ErrFailedPrecondition = errors.New("not allowed now")
)

// State is the replicated authentication state at one revision. The zero
// State (and nil) is authentication off with no users and no roles.
type State struct {
	pb    *raftcmdv1.AuthState
	users map[string]*raftcmdv1.AuthUser
	roles map[string]*kvstorev1.Role
	// key signs and checks tokens; nil while no key was ever set.
	key ed25519.PrivateKey
	// verified caches the claims of tokens whose signature checked out
	// against key (see Verify); it goes with the State, so a change of the
	// state starts it afresh.
	verified  sync.Map // token string -> claims
	nVerified atomic.Int64
}

// NewState builds a State from its stored form (nil: the empty state).
func NewState(pb *raftcmdv1.AuthState) *State {
	if pb == nil {
		pb = &raftcmdv1.AuthState{}
	}
	s := &State{pb: pb, users: make(map[string]*raftcmdv1.AuthUser, len(pb.GetUsers())), roles: make(map[string]*kvstorev1.Role, len(pb.GetRoles()))}
	for _, u := range pb.GetUsers() {
		s.users[u.GetName()] = u
	}
	for _, r := range pb.GetRoles() {
		s.roles[r.GetName()] = r
	}
	if seed := pb.GetSigningSeed(); len(seed) == ed25519.SeedSize {
		s.key = ed25519.NewKeyFromSeed(seed)
	}
	return s
}

// Decode builds a State from its encoding (empty: the empty state).
func Decode(b []byte) (*State, error) {
	var pb raftcmdv1.AuthState
	if err := proto.Unmarshal(b, &pb); err != nil {
		return nil, fmt.Errorf("decode auth state: %w", err)
	}
	return NewState(&pb), nil
}

// Encode returns the State's stored form.
func (s *State) Encode() ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(s.proto())
}

func (s *State) proto() *raftcmdv1.AuthState {
	if s == nil || s.pb == nil {
		return &raftcmdv1.AuthState{}
	}
	return s.pb
}

// Enabled tells whether authentication is on.
func (s *State) Enabled() bool { return s != nil && s.proto().GetEnabled() }

// User returns a user, or nil.
func (s *State) User(name string) *raftcmdv1.AuthUser {
	if s == nil {
		return nil
	}
	return s.users[name]
}

// List returns the users (without their password hashes) and the roles,
// sorted by name.
func (s *State) List() ([]*kvstorev1.User, []*kvstorev1.Role) {
	pb := s.proto()
	users := make([]*kvstorev1.User, 0, len(pb.GetUsers()))
	for _, u := range pb.GetUsers() {
		users = append(users, &kvstorev1.User{Name: u.GetName(), Roles: slices.Clone(u.GetRoles())})
	}
	roles := make([]*kvstorev1.Role, 0, len(pb.GetRoles()))
	for _, r := range pb.GetRoles() {
		roles = append(roles, proto.CloneOf(r))
	}
	return users, roles
}

// IsRoot tells whether a user has the root role.
func (s *State) IsRoot(user string) bool {
	u := s.User(user)
	return u != nil && slices.Contains(u.GetRoles(), RootRole)
}

// Apply returns the state after cmd, applied at revision rev, or an error
// matching ErrInvalid, ErrNotFound, ErrExists or ErrFailedPrecondition
// that refuses it (s is unchanged either way).
func Apply(s *State, cmd *raftcmdv1.AuthCommand, rev uint64) (*State, error) {
	next := proto.CloneOf(s.proto())
	if err := apply(next, cmd, rev); err != nil {
		return nil, err
	}
	slices.SortFunc(next.Users, func(a, b *raftcmdv1.AuthUser) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.SortFunc(next.Roles, func(a, b *kvstorev1.Role) int { return strings.Compare(a.GetName(), b.GetName()) })
	return NewState(next), nil
}

func apply(st *raftcmdv1.AuthState, cmd *raftcmdv1.AuthCommand, rev uint64) error {
	findUser := func(name string) (int, *raftcmdv1.AuthUser, error) {
		if err := ValidName("user", name); err != nil {
			return -1, nil, err
		}
		for i, u := range st.Users {
			if u.GetName() == name {
				return i, u, nil
			}
		}
		return -1, nil, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	findRole := func(name string) (int, *kvstorev1.Role, error) {
		if err := ValidName("role", name); err != nil {
			return -1, nil, err
		}
		for i, r := range st.Roles {
			if r.GetName() == name {
				return i, r, nil
			}
		}
		return -1, nil, fmt.Errorf("role %q: %w", name, ErrNotFound)
	}
	switch c := cmd.GetChange().GetChange().(type) {
	case *kvstorev1.AuthChangeRequest_Enable:
		_, root, err := findUser(RootUser)
		if err != nil {
			return fmt.Errorf("%w: enabling authentication needs a user named %s first", ErrFailedPrecondition, RootUser)
		}
		if len(cmd.GetSigningSeed()) != ed25519.SeedSize {
			return fmt.Errorf("%w: enable without a %d-byte signing seed", ErrInvalid, ed25519.SeedSize)
		}
		if _, _, err := findRole(RootRole); err != nil {
			st.Roles = append(st.Roles, &kvstorev1.Role{Name: RootRole})
		}
		if !slices.Contains(root.Roles, RootRole) {
			root.Roles = append(root.Roles, RootRole)
			slices.Sort(root.Roles)
		}
		st.Enabled = true
		st.SigningSeed = slices.Clone(cmd.GetSigningSeed())
	case *kvstorev1.AuthChangeRequest_Disable:
		st.Enabled = false
	case *kvstorev1.AuthChangeRequest_UserAdd:
		a := c.UserAdd
		if err := ValidName("user", a.GetName()); err != nil {
			return err
		}
		if _, _, err := findUser(a.GetName()); err == nil {
			return fmt.Errorf("user %q: %w", a.GetName(), ErrExists)
		}
		if a.GetPassword() != "" {
			return fmt.Errorf("%w: a password must be hashed before it is proposed", ErrInvalid)
		}
		if !a.GetNoPassword() && len(a.GetPasswordHash()) == 0 {
			return fmt.Errorf("%w: user %q needs a password (or no_password)", ErrInvalid, a.GetName())
		}
		st.Users = append(st.Users, &raftcmdv1.AuthUser{Name: a.GetName(), PasswordHash: slices.Clone(a.GetPasswordHash()), Generation: rev})
	case *kvstorev1.AuthChangeRequest_UserDelete:
		name := c.UserDelete.GetName()
		i, _, err := findUser(name)
		if err != nil {
			return err
		}
		if name == RootUser && st.Enabled {
			return fmt.Errorf("%w: user %s cannot be deleted while authentication is on", ErrFailedPrecondition, RootUser)
		}
		st.Users = slices.Delete(st.Users, i, i+1)
	case *kvstorev1.AuthChangeRequest_UserChangePassword:
		p := c.UserChangePassword
		_, u, err := findUser(p.GetName())
		if err != nil {
			return err
		}
		if p.GetPassword() != "" || len(p.GetPasswordHash()) == 0 {
			return fmt.Errorf("%w: a new password must be given hashed", ErrInvalid)
		}
		u.PasswordHash = slices.Clone(p.GetPasswordHash())
		u.Generation = rev
	case *kvstorev1.AuthChangeRequest_UserGrantRole:
		g := c.UserGrantRole
		_, u, err := findUser(g.GetUser())
		if err != nil {
			return err
		}
		if g.GetRole() != RootRole {
			if _, _, err := findRole(g.GetRole()); err != nil {
				return err
			}
		} else if _, _, err := findRole(RootRole); err != nil {
			st.Roles = append(st.Roles, &kvstorev1.Role{Name: RootRole})
		}
		if !slices.Contains(u.Roles, g.GetRole()) {
			u.Roles = append(u.Roles, g.GetRole())
			slices.Sort(u.Roles)
		}
	case *kvstorev1.AuthChangeRequest_UserRevokeRole:
		g := c.UserRevokeRole
		_, u, err := findUser(g.GetUser())
		if err != nil {
			return err
		}
		i := slices.Index(u.Roles, g.GetRole())
		if i < 0 {
			return fmt.Errorf("role %q of user %q: %w", g.GetRole(), g.GetUser(), ErrNotFound)
		}
		if u.GetName() == RootUser && g.GetRole() == RootRole && st.Enabled {
			return fmt.Errorf("%w: the root role cannot be taken from %s while authentication is on", ErrFailedPrecondition, RootUser)
		}
		u.Roles = slices.Delete(u.Roles, i, i+1)
	case *kvstorev1.AuthChangeRequest_RoleAdd:
		name := c.RoleAdd.GetName()
		if err := ValidName("role", name); err != nil {
			return err
		}
		if _, _, err := findRole(name); err == nil {
			return fmt.Errorf("role %q: %w", name, ErrExists)
		}
		st.Roles = append(st.Roles, &kvstorev1.Role{Name: name})
	case *kvstorev1.AuthChangeRequest_RoleDelete:
		name := c.RoleDelete.GetName()
		i, _, err := findRole(name)
		if err != nil {
			return err
		}
		if name == RootRole && st.Enabled {
			return fmt.Errorf("%w: the root role cannot be deleted while authentication is on", ErrFailedPrecondition)
		}
		st.Roles = slices.Delete(st.Roles, i, i+1)
		for _, u := range st.Users {
			u.Roles = slices.DeleteFunc(u.Roles, func(r string) bool { return r == name })
		}
	case *kvstorev1.AuthChangeRequest_RoleGrantPermission:
		g := c.RoleGrantPermission
		_, r, err := findRole(g.GetRole())
		if err != nil {
			return err
		}
		p := g.GetPermission()
		if err := ValidPermission(p); err != nil {
			return err
		}
		// A grant on the same keys replaces the old one, as etcd's does.
		r.Permissions = slices.DeleteFunc(r.Permissions, func(q *kvstorev1.Permission) bool {
			return bytes.Equal(q.GetKey(), p.GetKey()) && bytes.Equal(q.GetRangeEnd(), p.GetRangeEnd())
		})
		r.Permissions = append(r.Permissions, proto.CloneOf(p))
		slices.SortFunc(r.Permissions, func(a, b *kvstorev1.Permission) int {
			if c := bytes.Compare(a.GetKey(), b.GetKey()); c != 0 {
				return c
			}
			return bytes.Compare(a.GetRangeEnd(), b.GetRangeEnd())
		})
	case *kvstorev1.AuthChangeRequest_RoleRevokePermission:
		g := c.RoleRevokePermission
		_, r, err := findRole(g.GetRole())
		if err != nil {
			return err
		}
		n := len(r.Permissions)
		r.Permissions = slices.DeleteFunc(r.Permissions, func(q *kvstorev1.Permission) bool {
			return bytes.Equal(q.GetKey(), g.GetKey()) && bytes.Equal(q.GetRangeEnd(), g.GetRangeEnd())
		})
		if len(r.Permissions) == n {
			return fmt.Errorf("permission of role %q on %s: %w", g.GetRole(), describeRange(g.GetKey(), g.GetRangeEnd()), ErrNotFound)
		}
	default:
		return fmt.Errorf("%w: no change given", ErrInvalid)
	}
	return nil
}

// ValidName checks a user or role name: 1 to 128 printable characters, no
// spaces, no colon (kvctl's NAME:PASSWORD).
func ValidName(what, name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%w: %s name must be 1 to %d bytes", ErrInvalid, what, maxNameLen)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == ':' {
			return fmt.Errorf("%w: %s name %q has a space, a colon or an unprintable character", ErrInvalid, what, name)
		}
	}
	return nil
}

// ValidPermission checks a permission's type and range.
func ValidPermission(p *kvstorev1.Permission) error {
	switch p.GetType() {
	case kvstorev1.PermissionType_PERMISSION_TYPE_READ, kvstorev1.PermissionType_PERMISSION_TYPE_WRITE, kvstorev1.PermissionType_PERMISSION_TYPE_READWRITE:
	default:
		return fmt.Errorf("%w: permission type must be READ, WRITE or READWRITE", ErrInvalid)
	}
	if end := p.GetRangeEnd(); len(end) > 0 && !isInf(end) && bytes.Compare(end, p.GetKey()) <= 0 {
		return fmt.Errorf("%w: permission range end %q is not after its key %q", ErrInvalid, end, p.GetKey())
	}
	return nil
}

func describeRange(key, end []byte) string {
	switch {
	case len(end) == 0:
		return fmt.Sprintf("key %q", key)
	case isInf(end):
		return fmt.Sprintf("keys from %q on", key)
	}
	return fmt.Sprintf("[%q, %q)", key, end)
}
