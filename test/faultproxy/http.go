package faultproxy

import (
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
)

// HTTPKind is what happens to one HTTP request.
type HTTPKind int

const (
	Pass      HTTPKind = iota
	SlowDown           // answer 503 SlowDown as S3 does when throttling, without forwarding
	ResetReq           // reset the connection before any answer (the request may not arrive)
	CutBody            // forward, then cut the answer's body after HTTPFault.After bytes
	CutUpload          // forward only HTTPFault.After bytes of the request body, then reset
)

func (k HTTPKind) String() string {
	return [...]string{"pass", "503-slowdown", "reset", "cut-response", "cut-upload"}[k]
}

// HTTPFault is what one request suffers.
type HTTPFault struct {
	Kind  HTTPKind
	After int64
}

// HTTPProxy is a reverse proxy on 127.0.0.1 whose plan decides, request by request, how
// the link misbehaves. The Host header passes unchanged, so S3 signatures stay valid.
type HTTPProxy struct {
	URL string // http://127.0.0.1:PORT

	srv      *http.Server
	ln       net.Listener
	rp       *httputil.ReverseProxy
	mu       sync.Mutex
	plan     func(n int, r *http.Request) HTTPFault
	requests int
	injected map[HTTPKind]int
}

// NewHTTP starts a proxy in front of the HTTP server at target (http://host:port).
func NewHTTP(target string) (*HTTPProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &HTTPProxy{URL: "http://" + ln.Addr().String(), ln: ln, injected: map[HTTPKind]int{}}
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.ErrorLog = nil
	p.srv = &http.Server{Handler: p}
	go p.srv.Serve(ln)
	return p, nil
}

// SetPlan decides the fault of every request from now on by its number (counted from
// this call) and content.
func (p *HTTPProxy) SetPlan(plan func(n int, r *http.Request) HTTPFault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plan, p.requests = plan, 0
}

// Injected counts the faults that happened, by kind.
func (p *HTTPProxy) Injected() map[HTTPKind]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.injected)
}

// Close stops the proxy.
func (p *HTTPProxy) Close() { p.srv.Close() }

func (p *HTTPProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	var f HTTPFault
	if p.plan != nil {
		f = p.plan(p.requests, r)
	}
	p.requests++
	if f.Kind != Pass {
		p.injected[f.Kind]++
	}
	p.mu.Unlock()
	switch f.Kind {
	case SlowDown:
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
	case ResetReq:
		hijackReset(w)
	case CutUpload:
		io.CopyN(io.Discard, r.Body, f.After)
		hijackReset(w)
	case CutBody:
		p.rp.ServeHTTP(&cutWriter{ResponseWriter: w, left: f.After}, r)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

func hijackReset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	resetConn(conn)
}

// cutWriter passes a response through until its budget is spent, then drops the link.
type cutWriter struct {
	http.ResponseWriter
	left int64
	cut  bool
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.cut {
		return 0, io.ErrClosedPipe
	}
	if int64(len(b)) <= c.left {
		c.left -= int64(len(b))
		return c.ResponseWriter.Write(b)
	}
	c.ResponseWriter.Write(b[:c.left])
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	c.cut = true
	// Abort the handler: net/http closes the connection mid-body, so the client reads a
	// short body (an unexpected EOF), exactly as a dropped link looks.
	panic(http.ErrAbortHandler)
}
