// A minimal Redpanda Connect build for the benchmark's peer comparison: only
// the Kafka input, the pure processors and the HTTP output are compiled in.
package main

import (
	"context"

	"github.com/redpanda-data/benthos/v4/public/service"

	_ "github.com/redpanda-data/connect/v4/public/components/io"
	_ "github.com/redpanda-data/connect/v4/public/components/kafka"
	_ "github.com/redpanda-data/connect/v4/public/components/pure"
)

func main() {
	service.RunCLI(context.Background())
}
