// The benchmark filter on emersion/go-milter (Debian golang-github-emersion-go-milter-dev):
// continue at every stage, add one header at EOM.
// Usage: go-milter-filter SPEC   (inet:PORT@127.0.0.1 or unix:/path)
// Built offline by bench/setup.ts with GO111MODULE=off GOPATH=/usr/share/gocode.
package main

import (
	"fmt"
	"net"
	"net/textproto"
	"os"
	"strings"

	"github.com/emersion/go-milter"
)

type benchMilter struct{}

func (benchMilter) Connect(host string, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) RcptTo(rcptTo string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) Header(name string, value string, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (benchMilter) Body(m *milter.Modifier) (milter.Response, error) {
	if err := m.AddHeader("X-Bench", "milterd-bench"); err != nil {
		return nil, err
	}
	return milter.RespContinue, nil
}

func listen(spec string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		_ = os.Remove(path)
		return net.Listen("unix", path)
	case strings.HasPrefix(spec, "inet:"):
		rest := strings.TrimPrefix(spec, "inet:")
		at := strings.Index(rest, "@")
		if at < 0 {
			return net.Listen("tcp", ":"+rest)
		}
		return net.Listen("tcp", net.JoinHostPort(rest[at+1:], rest[:at]))
	}
	return nil, fmt.Errorf("unsupported spec %q", spec)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-milter-filter SPEC")
		os.Exit(2)
	}
	ln, err := listen(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := milter.Server{
		NewMilter: func() milter.Milter { return benchMilter{} },
		Actions:   milter.OptAddHeader,
		Protocol:  0,
	}
	fmt.Println("READY")
	if err := server.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
