// Package faultproxy is a TCP proxy on 127.0.0.1 for tests that need a link to misbehave
// at a chosen moment: it can stall the server-to-client direction after a number of bytes,
// and, per connection, reset it (RST), cut it (a clean close midway) or stall it for a
// while. HTTP (http.go) adds faults that need to understand requests: S3's 503 SlowDown,
// resets before an answer, and bodies cut midway.
package faultproxy

import (
	"io"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Kind is what happens to a connection.
type Kind int

const (
	None  Kind = iota
	Reset      // close with SO_LINGER 0: the peer sees "connection reset by peer"
	Cut        // close both directions cleanly, as a dropped stream looks to a reader
	Stall      // stop forwarding for Fault.For, then go on
)

func (k Kind) String() string {
	return [...]string{"none", "reset", "cut", "stall"}[k]
}

// Fault is what one connection suffers once After bytes went from the server to the
// client (or from the client to the server with Upstream).
type Fault struct {
	Kind     Kind
	After    int64
	Upstream bool
	For      time.Duration // Stall only
}

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
	plan       func(conn int) Fault
	accepted   int
	injected   map[Kind]int
}

// Start starts a proxy to target for a test, which fails if it cannot, and closes it
// when the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// New starts a proxy to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln,
		stalled: make(chan struct{}), release: make(chan struct{}), injected: map[Kind]int{}}
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

// SetPlan decides the fault of every connection accepted from now on, by its number
// (0, 1, 2, ... counted from this call). A nil plan, or Kind None, forwards faithfully.
func (p *Proxy) SetPlan(plan func(conn int) Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plan, p.accepted = plan, 0
}

// Injected counts the faults that actually happened, by kind.
func (p *Proxy) Injected() map[Kind]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.injected)
}

// CutAll closes every open connection now (reset), as a link that drops would.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		resetConn(c)
	}
	p.conns = nil
}

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
		var f Fault
		if p.plan != nil {
			f = p.plan(p.accepted)
		}
		p.accepted++
		p.mu.Unlock()
		l := &link{p: p, client: c, server: s, fault: f}
		go func() { l.copy(s, c, true); s.Close() }()
		go func() { l.copy(c, s, false); c.Close() }()
	}
}

// link is one proxied connection and its planned fault.
type link struct {
	p              *Proxy
	client, server net.Conn
	fault          Fault
	once           sync.Once
	fired          atomic.Bool
	up, down       atomic.Int64
}

// fire injects the fault once; it reports whether forwarding must stop.
func (l *link) fire() (stop bool) {
	l.once.Do(func() {
		l.fired.Store(true)
		l.p.mu.Lock()
		l.p.injected[l.fault.Kind]++
		l.p.mu.Unlock()
		switch l.fault.Kind {
		case Reset:
			resetConn(l.client)
			resetConn(l.server)
		case Cut:
			l.client.Close()
			l.server.Close()
		case Stall:
			time.Sleep(l.fault.For)
		}
	})
	return l.fault.Kind == Reset || l.fault.Kind == Cut
}

func (l *link) copy(dst io.Writer, src io.Reader, upstream bool) {
	buf := make([]byte, 32<<10)
	counter := &l.down
	if upstream {
		counter = &l.up
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			data := buf[:n]
			if l.fault.Kind != None && l.fault.Upstream == upstream && !l.fired.Load() {
				before := counter.Load()
				if before+int64(n) > l.fault.After {
					// Forward exactly After bytes, then misbehave.
					keep := max(l.fault.After-before, 0)
					if keep > 0 {
						if _, werr := dst.Write(data[:keep]); werr != nil {
							return
						}
					}
					counter.Add(keep)
					if l.fire() {
						return
					}
					data = data[keep:]
				}
			}
			if !upstream {
				if limit := l.p.stallAfter.Load(); limit > 0 && l.p.down.Add(int64(len(data))) > limit {
					l.p.stallOnce.Do(func() { close(l.p.stalled) })
					<-l.p.release
				}
			}
			if len(data) > 0 {
				if _, werr := dst.Write(data); werr != nil {
					return
				}
				counter.Add(int64(len(data)))
			}
		}
		if err != nil {
			return
		}
	}
}

// resetConn closes a TCP connection with an RST instead of a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
