package auth

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"
)

// claims are a token's: the user (sub), its generation, and the standard
// expiry and issue times.
type claims struct {
	Generation uint64 `json:"gen"`
	jwt.RegisteredClaims
}

// Token signs a token for user valid until expires. It needs
// authentication on (the state's key).
func (s *State) Token(user string, now time.Time, ttl time.Duration) (string, time.Time, error) {
	u := s.User(user)
	if !s.Enabled() || s.key == nil || u == nil {
		return "", time.Time{}, fmt.Errorf("%w: authentication is off", ErrFailedPrecondition)
	}
	exp := now.Add(ttl).Truncate(time.Second)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims{
		Generation: u.GetGeneration(),
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   user,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	})
	signed, err := tok.SignedString(s.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return signed, exp, nil
}

// Verify returns the user a token names, or an error matching
// ErrUnauthenticated: a bad signature (another key: authentication was
// enabled again since), expired, or naming a user deleted or whose
// password changed since.
func (s *State) Verify(token string, now time.Time) (string, error) {
	if !s.Enabled() || s.key == nil {
		return "", fmt.Errorf("%w: authentication is off", ErrUnauthenticated)
	}
	var c claims
	if v, ok := s.verified.Load(token); ok {
		// Checked before: only the expiry and the user are left to check.
		c = v.(claims)
		if !now.Before(c.ExpiresAt.Time) {
			return "", fmt.Errorf("%w: the token expired; authenticate again", ErrUnauthenticated)
		}
	} else {
		_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return s.key.Public(), nil },
			jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithTimeFunc(func() time.Time { return now }),
		)
		if err != nil {
			if errors.Is(err, jwt.ErrTokenExpired) {
				return "", fmt.Errorf("%w: the token expired; authenticate again", ErrUnauthenticated)
			}
			return "", fmt.Errorf("%w: invalid token", ErrUnauthenticated)
		}
		// A signature check costs about as much as a whole get: keep the
		// result, for a bounded number of tokens.
		if s.nVerified.Add(1) <= maxVerified {
			s.verified.Store(token, c)
		}
	}
	u := s.User(c.Subject)
	if u == nil || u.GetGeneration() != c.Generation {
		return "", fmt.Errorf("%w: the token's user was deleted or its password changed; authenticate again", ErrUnauthenticated)
	}
	return c.Subject, nil
}

// maxVerified bounds the tokens a State remembers as checked.
const maxVerified = 10000

// HashPassword hashes a password with bcrypt at its default cost.
func HashPassword(password string) ([]byte, error) {
	if password == "" {
		return nil, fmt.Errorf("%w: empty password", ErrInvalid)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return h, nil
}

// ValidHash checks a bcrypt hash given instead of a password.
func ValidHash(h []byte) error {
	if _, err := bcrypt.Cost(h); err != nil {
		return fmt.Errorf("%w: password hash: %w", ErrInvalid, err)
	}
	return nil
}

// errLogin is the one answer to a failed login: it never tells a missing
// user from a wrong password.
var errLogin = fmt.Errorf("%w: wrong user name or password", ErrUnauthenticated)

// Login checks a user's password.
func (s *State) Login(user, password string) error {
	u := s.User(user)
	if u == nil || len(u.GetPasswordHash()) == 0 {
		// Spend the time a check takes, so timing does not tell either.
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return errLogin
	}
	if bcrypt.CompareHashAndPassword(u.GetPasswordHash(), []byte(password)) != nil {
		return errLogin
	}
	return nil
}

var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("kvstore"), bcrypt.DefaultCost)
	return h
})
