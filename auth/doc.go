// Package auth is kvstore's model of users, roles and permissions, as
// etcd's: the replicated state (State, changed only by Apply, which every
// node runs at the same raft index), the permission check (State.Check),
// passwords (bcrypt) and tokens (JWTs signed with Ed25519).
//
// What must hold:
//
//   - A State is never changed once built: Apply returns a new one. Apply
//     is deterministic (no clock, no randomness): the signing key and the
//     password hashes come in the command.
//   - Authentication is off until enabled, and enabling needs a user named
//     root, who then has the root role. While it is on, root keeps the
//     root role and cannot be deleted, so someone can always turn it off.
//   - The root role allows everything. Any other user may touch a key only
//     when the union of its roles' permissions of that kind covers the
//     whole range it asks for: a request over a range partly allowed is
//     refused whole.
//   - A token names its user and the user's generation (the revision of
//     its creation or last password change); it is accepted only while
//     that user exists with that generation, authentication is on, the
//     key that signed it is the state's, and it has not expired. So
//     deleting a user, changing its password or disabling authentication
//     ends its tokens on every node without a raft round. A State
//     remembers the tokens whose signature it checked (the expiry and the
//     user are checked on every call); the next State starts afresh.
//   - Refusals never name keys other than the ones the caller asked for,
//     and a failed login does not tell a missing user from a wrong
//     password.
package auth
