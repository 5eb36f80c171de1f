// A command line for h2spec's library, for source trees that lack upstream's cmd/h2spec
// (which pulls in cobra for the same few flags). Same flags and sections as upstream's.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
)

func main() {
	c := &config.Config{}
	flag.StringVar(&c.Host, "h", "127.0.0.1", "target host")
	flag.IntVar(&c.Port, "p", 0, "target port")
	flag.StringVar(&c.Path, "P", "/", "target path")
	timeout := flag.Int("o", 2, "time seconds to test timeout")
	flag.IntVar(&c.MaxHeaderLen, "max-header-length", 4000, "maximum length of HTTP header")
	flag.StringVar(&c.JUnitReport, "j", "", "path for JUnit test report")
	flag.BoolVar(&c.Strict, "S", false, "run in the strict mode")
	flag.BoolVar(&c.Verbose, "v", false, "output verbose log")
	flag.Parse()
	c.Timeout = time.Duration(*timeout) * time.Second
	c.Sections = flag.Args()
	success, err := h2spec.Run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if !success {
		os.Exit(1)
	}
}
