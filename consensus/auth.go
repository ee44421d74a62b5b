package consensus

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/kvstore/kvstore/auth"
	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// Users, roles and the authentication switch (package auth) are changed
// through raft like any write, so every node applies a change at the same
// index; the whole state is one record of the store (storage.SetAuthState)
// and travels in snapshots and backups. The FSM keeps the state as of its
// applied index (Auth), which the API checks every call against without a
// raft round.

// Auth returns the authentication state as of the applied index.
func (r *Replica) Auth() *auth.State { return r.fsm.auth.Load() }

// AuthChange proposes a change to the users, roles or switch: passwords
// hashed already (the API does it where the call arrives). Enabling gets
// a new token signing key here, on the leader.
func (r *Replica) AuthChange(ctx context.Context, req *kvstorev1.AuthChangeRequest) (*kvstorev1.AuthChangeResponse, error) {
	cmd := &raftcmdv1.AuthCommand{Change: req}
	if req.GetEnable() != nil {
		cmd.SigningSeed = make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(cmd.SigningSeed); err != nil {
			return nil, fmt.Errorf("auth enable: signing key: %w", err)
		}
	}
	_, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Auth{Auth: cmd}})
	if err != nil {
		return nil, err
	}
	return &kvstorev1.AuthChangeResponse{Header: r.Header(idx)}, nil
}

// doAuth applies an auth change at b's revision; a change the state
// refuses is rejected (the same way on every node) and writes nothing.
func doAuth(b *storage.Batch, cmd *raftcmdv1.AuthCommand, st **auth.State) error {
	next, err := auth.Apply(*st, cmd, b.Revision())
	if err != nil {
		return rejected{err}
	}
	enc, err := next.Encode()
	if err != nil {
		return fmt.Errorf("encode auth state: %w", err)
	}
	if err := b.SetAuthState(enc); err != nil {
		return err
	}
	*st = next
	return nil
}

// loadAuth reads the authentication state from the store.
func (f *FSM) loadAuth() error {
	enc, err := f.kv.AuthState()
	if err != nil {
		return fmt.Errorf("load auth state: %w", err)
	}
	st, err := auth.Decode(enc)
	if err != nil {
		return errors.Join(fmt.Errorf("load auth state: %w", err), storage.ErrCorrupt)
	}
	f.auth.Store(st)
	return nil
}
