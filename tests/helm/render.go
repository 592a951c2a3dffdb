// A Helm-compatible renderer for the tests: Helm's engine is Go text/template with the sprig
// functions (less env and expandenv) plus include, required, toYaml and fail, executed over
// {Values, Release, Chart, Capabilities} with missingkey=zero and "<no value>" removed.
// Built with Debian's golang-go, golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v3-dev.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type request struct {
	Chart     string                 `json:"chart"`
	Values    map[string]interface{} `json:"values"`
	Release   string                 `json:"release"`
	Namespace string                 `json:"namespace"`
}

func readYAML(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		panic(fmt.Sprintf("%s: %v", path, err))
	}
	return out
}

// coalesce merges user values over the chart's defaults, maps deeply (Helm's CoalesceValues).
func coalesce(base, over map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, ok1 := out[k].(map[string]interface{})
		om, ok2 := v.(map[string]interface{})
		if ok1 && ok2 {
			out[k] = coalesce(bm, om)
		} else if v != nil {
			out[k] = v
		}
	}
	return out
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	chart := readYAML(filepath.Join(req.Chart, "Chart.yaml"))
	values := coalesce(readYAML(filepath.Join(req.Chart, "values.yaml")), req.Values)
	top := map[string]interface{}{
		"Values":       values,
		"Release":      map[string]interface{}{"Name": req.Release, "Namespace": req.Namespace, "Service": "Helm"},
		"Chart":        map[string]interface{}{"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
		"Capabilities": map[string]interface{}{"KubeVersion": map[string]interface{}{"Version": "v1.30.0"}},
	}
	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	root.Funcs(funcs).Option("missingkey=zero")
	paths, _ := filepath.Glob(filepath.Join(req.Chart, "templates", "*"))
	sort.Strings(paths)
	for _, path := range paths {
		src, err := os.ReadFile(path)
		if err != nil {
			panic(err)
		}
		if _, err := root.New(filepath.Base(path)).Parse(string(src)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	out := map[string]string{}
	for _, path := range paths {
		name := filepath.Base(path)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
