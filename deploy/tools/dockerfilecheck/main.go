// Command dockerfilecheck reads a Dockerfile as BuildKit reads it, with BuildKit's own parser,
// instruction parser and linter, and checks what a build would otherwise find out late:
//
//   - no parser or lint warning (BuildKit's `docker build --check` rules that run at parse time);
//   - every stage's base image resolves from ARGs declared, with defaults, before the first FROM;
//   - every COPY --from and RUN --mount from= names an earlier stage or an image;
//   - every file a COPY, ADD or RUN --mount=type=bind takes from the build context exists there
//     and is not excluded by the ignore file (<Dockerfile>.dockerignore beside the Dockerfile,
//     which BuildKit prefers, else <context>/.dockerignore).
//
// It prints the stages as JSON, or the problems. No Docker engine runs on the development
// machines, so this is how tests/contract/test_dockerfile.py knows the Dockerfile would build
// as far as reading it goes.
//
//	cd deploy/tools && go run ./dockerfilecheck <context dir> <Dockerfile>
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

type stage struct {
	Name     string `json:"name"`
	Base     string `json:"base"`
	Commands int    `json:"commands"`
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dockerfilecheck <context dir> <Dockerfile>")
		os.Exit(2)
	}
	contextDir, dockerfile := os.Args[1], os.Args[2]
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	source, err := os.Open(dockerfile)
	if err != nil {
		fail(err.Error())
	}
	defer source.Close()
	parsed, err := parser.Parse(source)
	if err != nil {
		fail("parse: " + err.Error())
	}
	for _, warning := range parsed.Warnings {
		line := 0
		if warning.Location != nil {
			line = warning.Location.Start.Line
		}
		report("line %d: %s", line, warning.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, message string, location []parser.Range) {
		report("line %d: %s: %s", lineOf(location), rule, message)
	}})
	stages, metaArgs, err := instructions.Parse(parsed.AST, lint)
	if err != nil {
		fail("instructions: " + err.Error())
	}

	defaults := map[string]bool{}
	for _, arg := range metaArgs {
		for _, kv := range arg.Args {
			defaults[kv.Key] = kv.Value != nil
		}
	}
	ignored := ignoreMatcher(contextDir, dockerfile)
	fromContext := func(where, path string) {
		if path == "." || path == "./" {
			return
		}
		if path == "" || strings.Contains(path, "$") {
			report("%s: source %q cannot be checked (empty, or a variable)", where, path)
			return
		}
		matches, _ := filepath.Glob(filepath.Join(contextDir, path))
		if len(matches) == 0 {
			report("%s: %s is not in the build context", where, path)
			return
		}
		for _, match := range matches {
			relative, _ := filepath.Rel(contextDir, match)
			if excluded, _ := ignored.MatchesOrParentMatches(filepath.ToSlash(relative)); !excluded {
				return
			}
		}
		report("%s: %s is excluded by the ignore file", where, path)
	}
	known := map[string]bool{}
	fromStage := func(where, name string) {
		if !known[strings.ToLower(name)] && !strings.ContainsAny(name, ":/.") {
			report("%s: --from=%s is neither an earlier stage nor an image", where, name)
		}
	}

	var out []stage
	for _, s := range stages {
		for _, ref := range argRef.FindAllStringSubmatch(s.BaseName, -1) {
			if has, declared := defaults[ref[1]]; !declared || !has {
				report("FROM %s: ARG %s has no default before the first FROM", s.BaseName, ref[1])
			}
		}
		for _, command := range s.Commands {
			where := fmt.Sprintf("line %d %s", lineOf(command.Location()), strings.ToUpper(command.Name()))
			switch c := command.(type) {
			case *instructions.CopyCommand:
				if c.From != "" {
					fromStage(where, c.From)
				} else {
					for _, path := range c.SourcePaths {
						fromContext(where, path)
					}
				}
			case *instructions.AddCommand:
				for _, path := range c.SourcePaths {
					if !strings.Contains(path, "://") {
						fromContext(where, path)
					}
				}
			case *instructions.RunCommand:
				// Mount options are read only with an expander; the values are taken as written.
				if err := c.Expand(func(word string) (string, error) { return word, nil }); err != nil {
					report("%s: %s", where, err)
					continue
				}
				for _, mount := range instructions.GetMounts(c) {
					if mount.From != "" {
						fromStage(where, mount.From)
					} else if mount.Type == instructions.MountTypeBind {
						fromContext(where, mount.Source)
					}
				}
			}
		}
		if s.Name != "" {
			known[strings.ToLower(s.Name)] = true
		}
		out = append(out, stage{Name: s.Name, Base: s.BaseName, Commands: len(s.Commands)})
	}
	if len(problems) > 0 {
		fail(strings.Join(problems, "\n"))
	}
	encoded, _ := json.MarshalIndent(map[string]any{"stages": out}, "", "  ")
	os.Stdout.Write(append(encoded, '\n'))
}

// ignoreMatcher reads the ignore file BuildKit would use for this Dockerfile and context.
func ignoreMatcher(contextDir, dockerfile string) *patternmatcher.PatternMatcher {
	var patterns []string
	for _, path := range []string{dockerfile + ".dockerignore", filepath.Join(contextDir, ".dockerignore")} {
		file, err := os.Open(path)
		if err != nil {
			continue
		}
		patterns, err = ignorefile.ReadAll(file)
		file.Close()
		if err != nil {
			fail(path + ": " + err.Error())
		}
		break
	}
	matcher, err := patternmatcher.New(patterns)
	if err != nil {
		fail("ignore file: " + err.Error())
	}
	return matcher
}

func lineOf(location []parser.Range) int {
	if len(location) == 0 {
		return 0
	}
	return location[0].Start.Line
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "dockerfilecheck:", message)
	os.Exit(1)
}
