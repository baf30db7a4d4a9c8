// Package faultproxy is a TCP proxy on 127.0.0.1 for tests that need a link to misbehave
// at a chosen moment: it can stall the server-to-client direction after a number of bytes.
package faultproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards connections from Addr to a target address.
type Proxy struct {
	Addr string

	target     string
	ln         net.Listener
	stallAfter atomic.Int64 // 0 = never
	down       atomic.Int64 // bytes sent to clients so far
	stalled    chan struct{}
	stallOnce  sync.Once
	release    chan struct{}
	closeOnce  sync.Once
	mu         sync.Mutex
	conns      []net.Conn
}

// New starts a proxy to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln,
		stalled: make(chan struct{}), release: make(chan struct{})}
	go p.serve()
	return p, nil
}

// StallAfter makes the proxy stop forwarding server-to-client bytes once n bytes have
// passed, until Release or Close. Stalled is closed when that happens.
func (p *Proxy) StallAfter(n int64) { p.stallAfter.Store(n) }

// Stalled is closed once the proxy has begun stalling.
func (p *Proxy) Stalled() <-chan struct{} { return p.stalled }

// Release resumes forwarding.
func (p *Proxy) Release() { p.closeOnce.Do(func() { close(p.release) }) }

// Close stops the proxy and every connection through it.
func (p *Proxy) Close() {
	p.Release()
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { io.Copy(s, c); s.Close() }()
		go func() { p.copyDown(c, s); c.Close() }()
	}
}

func (p *Proxy) copyDown(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if limit := p.stallAfter.Load(); limit > 0 && p.down.Add(int64(n)) > limit {
				p.stallOnce.Do(func() { close(p.stalled) })
				<-p.release
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
