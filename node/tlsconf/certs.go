package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Development certificates: a CA, node certificates (server and client
// authentication: a node serves clients and peers and dials peers) and
// client certificates (client authentication only, so that they never pass
// as a peer's). Keys are ECDSA P-256.

// Kind is what a certificate is for.
type Kind int

const (
	// Node certificates allow server and client authentication.
	Node Kind = iota
	// Client certificates allow client authentication only.
	Client
)

// CA is a certificate authority that signs certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed CA named cn, valid for validFor.
func NewCA(cn string, validFor time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"kvstore"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA's certificate and key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s and %s: %w", certFile, keyFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA %s: the certificate is not a CA's", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA %s: the key cannot sign", keyFile)
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// CertPEM is the CA's certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM is the CA's key in PEM (PKCS #8).
func (ca *CA) KeyPEM() ([]byte, error) { return keyPEM(ca.Key) }

// Request says what certificate to issue.
type Request struct {
	Kind Kind
	// Name is the common name: a node's name, or a client's user name.
	Name string
	// Hosts are the DNS names and IP addresses a node certificate is for
	// (its subject alternative names); clients' take none.
	Hosts []string
	// ValidFor is how long the certificate is valid.
	ValidFor time.Duration
}

// Issue makes a key and a certificate for req, signed by ca, both in PEM.
func (ca *CA) Issue(req Request) (certPEM, keyPEMOut []byte, err error) {
	if req.Name == "" {
		return nil, nil, errors.New("a certificate needs a name")
	}
	if req.ValidFor <= 0 {
		return nil, nil, errors.New("a certificate needs a positive validity")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"kvstore"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(req.ValidFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	switch req.Kind {
	case Node:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		addHosts(tmpl, req.Hosts)
		if len(tmpl.IPAddresses)+len(tmpl.DNSNames) == 0 {
			return nil, nil, errors.New("a node certificate needs at least one host name or IP address that clients and peers dial")
		}
	case Client:
		if len(req.Hosts) > 0 {
			return nil, nil, errors.New("a client certificate is for a user, not for hosts")
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	default:
		return nil, nil, fmt.Errorf("unknown certificate kind %d", req.Kind)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

// WriteFiles writes a certificate and its key to dir/name.pem and
// dir/name-key.pem (the key readable by its owner only), and returns the
// two paths. It refuses to overwrite existing files.
func WriteFiles(dir, name string, certPEM, keyPEM []byte) (certFile, keyFile string, err error) {
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+"-key.pem")
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Lstat(f); err == nil {
			return "", "", fmt.Errorf("write %s: %w", f, os.ErrExist)
		}
	}
	for _, f := range []struct {
		path string
		b    []byte
		mode os.FileMode
	}{{keyFile, keyPEM, 0o600}, {certFile, certPEM, 0o644}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return "", "", fmt.Errorf("write %s: %w", f.path, err)
		}
		_, err = fh.Write(f.b)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", "", fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return certFile, keyFile, nil
}

func addHosts(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

// selfSigned makes AutoTLS's certificate: its own CA, for server and client
// authentication, for localhost, 127.0.0.1, ::1 and hosts.
func selfSigned(hosts []string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kvstore auto TLS", Organization: []string{"kvstore"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	addHosts(tmpl, append([]string{"localhost", "127.0.0.1", "::1"}, hosts...))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
