# frozen_string_literal: true

require "open3"
require "tmpdir"

# The docs cannot rot unseen: every command in a ```sh block of the README and docs/ is one that
# bin/demo, bin/test, CI, bench/run or a test runs; every relative link leads to a file (and an
# anchor to a heading); every test docs/guarantees.md cites exists.
RSpec.describe "README and docs/" do
  root = File.expand_path("..", __dir__)
  docs = [File.join(root, "README.md"), *Dir[File.join(root, "docs", "*.md")]]
  runners = %w[bin/demo bin/test bin/test-interop bin/setup .ci/run bench/run].map { |f| File.join(root, f) } +
    Dir[File.join(root, "{spec,tests,crates/*/tests,demo}", "**", "*.{rb,rs,yml}")] +
    Dir[File.join(root, "crates", "*", "src", "**", "*.rs")]
  run_text = runners.select { |f| File.file?(f) }.map { |f| File.read(f) }.join("\n")
  slug = ->(heading) { heading.downcase.gsub(/[^a-z0-9 -]/, "").strip.tr(" ", "-") }

  # The commands of a Markdown text's ```sh blocks, comments and blank lines left out.
  commands = lambda do |text|
    text.scan(/^```sh\n(.*?)^```/m).flatten.flat_map(&:lines).map { |line| line.sub(/\s+#.*/, "").strip }
      .reject { |line| line.empty? || line.start_with?("#") }.flat_map { |line| line.split("&&").map(&:strip) }
  end

  # What must be found in something that runs: the program and its words up to the first option
  # or argument that is a path or a value (`bundle exec rustq-worker`, `redis-cli`, `bin/demo`).
  stem = lambda do |command|
    words = command.split
    words.take_while.with_index { |word, i| i.zero? || (!word.start_with?("-") && word.match?(/\A[a-z][a-z0-9_-]*\z/)) }.first(3).join(" ")
  end

  it "shows only commands that a script or a test runs" do
    unrun = docs.flat_map do |doc|
      commands.call(File.read(doc)).map { |command| [File.basename(doc), command, stem.call(command)] }
    end.reject { |_, _, s| run_text.include?(s) }
    expect(unrun).to eq([]), unrun.map { |doc, command, s| "#{doc}: `#{command}` (nothing runs `#{s}`)" }.join("\n")
  end

  it "links only to files and headings that exist" do
    broken = docs.flat_map do |doc|
      text = File.read(doc)
      text.scan(/\]\(([^)\s]+)\)/).flatten.reject { |target| target.match?(%r{\A[a-z]+://}) }.filter_map do |target|
        path, anchor = target.split("#", 2)
        file = path.empty? ? doc : File.expand_path(path, File.dirname(doc))
        next "#{File.basename(doc)}: #{target} (no such file)" unless File.exist?(file)
        next unless anchor && file.end_with?(".md")

        headings = File.read(file).scan(/^#+ (.+)$/).flatten.map(&slug)
        "#{File.basename(doc)}: #{target} (no such heading)" unless headings.include?(anchor)
      end
    end
    expect(broken).to eq([])
  end

  it "cites only tests that exist" do
    rust = Dir[File.join(root, "{tests,crates}", "**", "*.rs")].map { |f| File.read(f) }.join("\n")
    ruby = Dir[File.join(root, "spec", "**", "*_spec.rb")].map { |f| File.read(f) }.join("\n")
    rows = File.read(File.join(root, "docs", "guarantees.md")).lines.grep(/\A\|/).drop(2)
    missing = rows.flat_map do |row|
      cited = row.split("|")[-2].to_s
      fns = cited.scan(/`([a-z0-9_]+)`/).flatten.select { |name| name.count("_") >= 2 }
      specs = cited.scan(/"([^"]{12,})"/).flatten
      fns.reject { |name| rust.match?(/fn #{name}\b/) }.map { |name| "fn #{name}" } +
        specs.reject { |text| ruby.include?(text) }.map { |text| "spec \"#{text}\"" }
    end
    expect(missing).to eq([])
  end

  it "builds the gem that docs/ruby.md says `gem build jobs.gemspec` builds" do
    Dir.mktmpdir do |dir|
      out, status = Open3.capture2e("gem", "build", File.join(root, "jobs.gemspec"), "--output", File.join(dir, "rustq.gem"), chdir: root)
      expect(status).to be_success, out
      files, = Open3.capture2e("tar", "-xOf", File.join(dir, "rustq.gem"), "metadata.gz")
      expect(files).not_to be_empty
    end
  end
end
