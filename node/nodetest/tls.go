package nodetest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/tlsconf"
)

// WithTLS starts the cluster with TLS on: a CA made for the test signs
// every node's certificate (for 127.0.0.1) and a client certificate, with
// client certificates required (ClientCertAuth) and a gossip key. The
// cluster's clients (Client, Node.Client) speak TLS; PKI gives the files
// and configurations to make others.
func WithTLS() Option { return func(o *options) { o.tls = true } }

// PKI is a TLS cluster's certificates.
type PKI struct {
	Dir string
	// CA signs every certificate; CAFile is it in PEM.
	CA     *tlsconf.CA
	CAFile string
	// ClientCertFile and ClientKeyFile are the client certificate "client"
	// of the cluster's clients.
	ClientCertFile, ClientKeyFile string

	mu    sync.Mutex
	nodes map[string][2]string // node name: cert and key files
}

var gossipKey = []byte("0123456789abcdef0123456789abcdef")

func newPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := tlsconf.NewCA("nodetest CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, CA: ca, CAFile: filepath.Join(dir, "ca.pem"), nodes: map[string][2]string{}}
	if err := os.WriteFile(p.CAFile, ca.CertPEM(), 0o644); err != nil {
		return nil, err
	}
	if p.ClientCertFile, p.ClientKeyFile, err = p.Issue(tlsconf.Request{Kind: tlsconf.Client, Name: "client", ValidFor: time.Hour}); err != nil {
		return nil, err
	}
	return p, nil
}

// Issue writes a certificate and key signed by the CA into Dir, named
// after req.Name, and returns their files.
func (p *PKI) Issue(req tlsconf.Request) (certFile, keyFile string, err error) {
	cert, key, err := p.CA.Issue(req)
	if err != nil {
		return "", "", err
	}
	return tlsconf.WriteFiles(p.Dir, req.Name, cert, key)
}

// ClientConfig is the configuration of a client showing the "client"
// certificate and trusting the CA.
func (p *PKI) ClientConfig() *tls.Config {
	cert, err := tls.LoadX509KeyPair(p.ClientCertFile, p.ClientKeyFile)
	if err != nil {
		panic(fmt.Sprintf("nodetest: client certificate: %v", err))
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}
}

// configure turns TLS on in a node's configuration, issuing its
// certificate on its first start.
func (p *PKI) configure(name string, cfg *node.Config) error {
	p.mu.Lock()
	files, ok := p.nodes[name]
	p.mu.Unlock()
	if !ok {
		cert, key, err := p.Issue(tlsconf.Request{Kind: tlsconf.Node, Name: name, Hosts: []string{"127.0.0.1", "localhost"}, ValidFor: time.Hour})
		if err != nil {
			return err
		}
		files = [2]string{cert, key}
		p.mu.Lock()
		p.nodes[name] = files
		p.mu.Unlock()
	}
	cfg.TLS = tlsconf.Config{
		CertFile:       files[0],
		KeyFile:        files[1],
		TrustedCAFile:  p.CAFile,
		ClientCertAuth: true,
	}
	cfg.GossipKey = gossipKey
	return nil
}

// PKI is the cluster's certificates; nil without WithTLS.
func (c *Cluster) PKI() *PKI { return c.pki }

// clientOptions are the options of the cluster's clients.
func (c *Cluster) clientOptions() []client.Option {
	if c.pki == nil {
		return nil
	}
	return []client.Option{client.WithTLS(c.pki.ClientConfig())}
}
