// Command composecheck loads a Compose file as `docker compose config` does, with compose-go,
// the library docker compose is built on: the project's .env for ${...} interpolation, the
// Compose Specification's JSON schema, the references between services, volumes and networks,
// and relative paths resolved against the project directory. It prints the resolved project as
// JSON, or fails with compose-go's error, or with the names of variables used but set nowhere
// (compose would only warn, and substitute an empty string).
//
// No Docker engine runs on the development machines, so this is how tests/contract/test_compose.py
// knows that docker-compose.yml would load.
//
//	cd deploy/tools && go run ./composecheck <project dir> <compose file>...
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/sirupsen/logrus"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: composecheck <project dir> <compose file>...")
		os.Exit(2)
	}
	// compose-go reports an unset variable as a logrus warning: keep them, to fail on them.
	var warnings bytes.Buffer
	logrus.SetOutput(&warnings)
	logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})

	// The .env file only, not this process's environment: what a user gets from a fresh shell.
	options, err := cli.NewProjectOptions(os.Args[2:],
		cli.WithWorkingDirectory(os.Args[1]),
		cli.WithEnvFiles(),
		cli.WithDotEnv,
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err.Error())
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err.Error())
	}
	if strings.Contains(warnings.String(), "variable is not set") {
		fail(strings.TrimSpace(warnings.String()))
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err.Error())
	}
	os.Stdout.Write(out)
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "composecheck:", message)
	os.Exit(1)
}
