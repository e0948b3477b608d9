# frozen_string_literal: true

# rustq against Sidekiq 6.4.1, same machine, same run. Started by `bench/run`, which builds
# first; see bench/README.md for what each scenario measures.
#
#   ruby bench/bench.rb [--runs N] [--only 1,4,7] [--quick] [--ab DIR]
#
# Everything runs against a private redis-server on a spare loopback port, flushed before every
# measurement. Prints a Markdown table and writes bench/results/latest.json.

require "etc"
require "fileutils"
require "json"
require "optparse"
require "securerandom"
require "rbconfig"
require "socket"
require "tmpdir"
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)

module Bench
  ROOT = File.expand_path("..", __dir__)
  RUBY = RbConfig.ruby
  TARGET = ENV["CARGO_TARGET_DIR"] || File.join(ROOT, "target")
  RUST_WORKER = File.join(TARGET, "release", "rustq-worker")
  LATENCY_WORKER = File.join(TARGET, "release", "rustq-latency-worker")
  RUBY_HOST = File.join(ROOT, "exe", "rustq-worker")
  SIDEKIQ_APP = File.join(__dir__, "ruby", "sidekiq_app.rb")
  RUSTQ_APP = File.join(__dir__, "ruby", "rustq_app.rb")
  CONCURRENCY = 10

  def self.now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Median, min and max of a list of figures.
  Stat = Struct.new(:median, :min, :max, :runs) do
    def self.of(values)
      sorted = values.compact.sort
      return nil if sorted.empty?

      mid = sorted.size / 2
      median = sorted.size.odd? ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0
      new(median, sorted.first, sorted.last, values)
    end

    def to_h = { "median" => median, "min" => min, "max" => max, "runs" => runs }
  end

  # A private redis-server: no persistence, loopback only, a port nobody else uses.
  class RedisServer
    attr_reader :port, :url

    def initialize(dir)
      @dir = dir
      @port = spare_port
      @url = "redis://127.0.0.1:#{@port}/0"
      @pid = Process.spawn("redis-server", "--port", @port.to_s, "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", dir, "--logfile", File.join(dir, "redis.log"))
      deadline = Bench.now + 10
      begin
        client.ping
      rescue Redis::CannotConnectError
        raise "redis-server did not start (see #{dir}/redis.log)" if Bench.now > deadline

        sleep 0.05
        retry
      end
    end

    def client
      @client ||= Redis.new(url: @url)
    end

    def flush
      client.flushall
    end

    def stop
      Process.kill("TERM", @pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end

    private

    def spare_port
      loop do
        server = TCPServer.new("127.0.0.1", 0)
        port = server.addr[1]
        server.close
        return port unless port == 6379
      end
    end
  end

  # A worker process (rustq-worker, the Ruby host or Sidekiq) with its log in the run directory.
  class WorkerProcess
    attr_reader :pid

    def initialize(argv, env:, log:)
      @pid = Process.spawn(env, *argv, out: log, err: log, chdir: ROOT)
    end

    def rss_kb
      File.foreach("/proc/#{@pid}/status") { |l| return l.split[1].to_i if l.start_with?("VmRSS:") }
      nil
    rescue Errno::ENOENT
      nil
    end

    def alive?
      Process.waitpid(@pid, Process::WNOHANG).nil?
    rescue Errno::ECHILD
      false
    end

    def stop(timeout: 30)
      Process.kill("TERM", @pid)
      deadline = Bench.now + timeout
      until Process.waitpid(@pid, Process::WNOHANG)
        if Bench.now > deadline
          Process.kill("KILL", @pid)
          Process.wait(@pid)
          break
        end
        sleep 0.02
      end
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  class Runner
    def initialize(options)
      @runs = options[:runs]
      @only = options[:only]
      @quick = options[:quick]
      @ab = options[:ab]
      @dir = Dir.mktmpdir("rustq-bench-")
      @redis = RedisServer.new(@dir)
      ENV["REDIS_URL"] = @redis.url
      $LOAD_PATH.unshift(File.join(ROOT, "lib"))
      require "rustq"
      @rows = []
      @rss = Hash.new { |h, k| h[k] = [] }
      @config = File.join(@dir, "rustq.yml")
      # Sidekiq 6's heartbeat and poll intervals, so both sides do the same background work.
      File.write(@config, "heartbeat_interval: 5\npoll_interval_average: 5\n")
    end

    def run
      started = Bench.now
      log "private redis-server on #{@redis.url}; #{@runs} runs per figure; logs in #{@dir}"
      if @ab
        ab_scenarios
        seconds = Bench.now - started
        report(seconds)
        return
      end
      scenario(1) { push_scenario("1", "single push from Ruby (`perform_async`)", "single", @quick ? 5_000 : 20_000) }
      scenario(2) { push_scenario("2", "bulk push from Ruby (`push_bulk`, 100,000 jobs)", "bulk", 100_000) }
      scenario(3) { active_job_push_scenarios }
      scenario(4) { rust_processing_scenario }
      scenario(5) { ruby_processing_scenario("5", "processing Ruby no-op jobs (Ruby host vs Sidekiq)", active_job: false) }
      scenario(6) { ruby_processing_scenario("6", "processing ActiveJob no-op jobs (Ruby host vs Sidekiq)", active_job: true) }
      scenario(7) { latency_scenario }
      scenario(8) { memory_scenario }
      scenario(9) { scaling_scenario }
      scenario(10) { metrics_scenario }
      scenario(11) { cron_scenario }
      scenario(12) { limits_scenario }
      scenario(13) { batches_scenario }
      seconds = Bench.now - started
      log format("done in %.0f s", seconds)
      report(seconds)
    ensure
      @redis&.stop
    end

    private

    def scenario(number)
      return if @only && !@only.include?(number)

      yield
    end

    def log(message)
      $stderr.puts "[bench] #{message}"
    end

    def repeat(label)
      values = Array.new(@runs) do |i|
        value = yield
        log format("%s run %d: %s", label, i + 1, value.is_a?(Float) ? format("%.1f", value) : value.inspect)
        value
      end
      Stat.of(values)
    end

    def row(id, name, unit, rustq, sidekiq, target: nil, better: :higher, note: nil)
      ratio = if rustq && sidekiq && rustq.median.positive? && sidekiq.median.positive?
                better == :higher ? rustq.median / sidekiq.median : sidekiq.median / rustq.median
              end
      met = target&.call(rustq, sidekiq, ratio)
      @rows << { "id" => id, "scenario" => name, "unit" => unit, "better" => better.to_s,
                 "rustq" => rustq&.to_h, "sidekiq" => sidekiq&.to_h, "ratio" => ratio,
                 "target" => target && target_text(target), "met" => met, "note" => note }
    end

    def target_text(target) = target.respond_to?(:text) ? target.text : nil

    # A target: `text` for the table, a check of (rustq, sidekiq, ratio).
    def target(text, &check)
      check.define_singleton_method(:text) { text }
      check
    end

    # --- pushing ---------------------------------------------------------------------------

    def push_once(library, kind, count) = timed_script("push.rb", [library, kind], count)

    # Runs bench/ruby/`script` with `args` and `count` on a flushed Redis; jobs/s from the
    # {"seconds": S} it prints last.
    def timed_script(script, args, count, env = {})
      @redis.flush
      out = IO.popen({ "REDIS_URL" => @redis.url }.merge(env), [RUBY, File.join(__dir__, "ruby", script), *args, count.to_s],
                     err: [:child, :out], &:read)
      result = JSON.parse(out.lines.last || "{}")
      raise "#{script} #{args.join(" ")} failed: #{out}" unless result["seconds"]

      count / result["seconds"]
    end

    def push_scenario(id, name, kind, count)
      rustq = repeat("#{id} rustq #{kind}") { push_once("rustq", kind, count) }
      sidekiq = repeat("#{id} sidekiq #{kind}") { push_once("sidekiq", kind, count) }
      goal = kind == "bulk" ? 10 : 6
      row(id, name, "jobs/s", rustq, sidekiq, target: target("≥ #{goal}×") { |_, _, r| r && r >= goal })
      return unless kind == "single"

      floor_scenario(id, sidekiq, count)
      middleware_scenario(id, rustq, count)
    end

    # The same pushes with one Sidekiq client middleware in the app (it adds a key to each job):
    # rustq then prepares each job in Ruby, runs the chain and pushes the result.
    def middleware_scenario(id, plain, count)
      env = { "BENCH_CLIENT_MIDDLEWARE" => "1" }
      rustq = repeat("#{id}m rustq single+middleware") { timed_script("push.rb", %w[rustq single], count, env) }
      sidekiq = repeat("#{id}m sidekiq single+middleware") { timed_script("push.rb", %w[sidekiq single], count, env) }
      row("#{id}m", "single push with one Sidekiq client middleware (adds a key) in the app, both sides", "jobs/s", rustq, sidekiq,
          note: format("rustq with it: %.2f× its own speed without (%.0f jobs/s)", rustq.median / plain.median, plain.median))
    end

    # The most any client could do: the round trip alone, on a bare socket (bench/ruby/floor.rb),
    # against Sidekiq's `perform_async` from the same run.
    def floor_scenario(id, sidekiq, count)
      %w[sleep spin].each do |mode|
        floor = repeat("#{id}r floor #{mode}") { timed_script("floor.rb", [mode], count) }
        row("#{id}r-#{mode}", "ceiling for a Ruby client: a bare socket (in the rustq column) pushing one job at a time, #{mode == "spin" ? "spinning" : "sleeping"} for the reply, vs Sidekiq's `perform_async`",
            "jobs/s", floor, sidekiq, note: "a bare socket, not rustq")
      end
    end

    def active_job_push_scenarios
      count = @quick ? 3_000 : 10_000
      sidekiq = repeat("3 sidekiq perform_later") { push_once("sidekiq", "perform_later", count) }
      rustq = repeat("3 rustq perform_later") { push_once("rustq", "perform_later", count) }
      bulk = repeat("3 rustq perform_all_later") { push_once("rustq", "perform_all_later", count) }
      row("3", "ActiveJob `perform_later` (`:rustq` vs `:sidekiq` adapter)", "jobs/s", rustq, sidekiq,
          target: target("≥ 5×") { |_, _, r| r && r >= 5 })
      row("3b", "ActiveJob bulk: `Rustq.perform_all_later` vs Sidekiq's `perform_later`", "jobs/s", bulk, sidekiq,
          note: "Sidekiq 6.4.1 with Rails 6.1 has no bulk ActiveJob enqueue")
    end

    # --- processing ------------------------------------------------------------------------

    # Loads `count` jobs with rustq's bulk push (what they are pushed with does not matter).
    def load_jobs(count, active_job: false, fields: {}, batch: false)
      if active_job
        load_active_job
        count.times.each_slice(10_000) { |s| Rustq.perform_all_later(s.map { NoopActiveJob.new }) }
      elsif batch
        # One batch: its jobs are written when the block ends.
        Rustq::Batch.new.jobs { push_noop(count, fields) }
      else
        push_noop(count, fields)
      end
      raise "loaded #{queue_length} jobs, not #{count}" unless queue_length == count
    end

    def push_noop(count, fields)
      count.times.each_slice(10_000) do |s|
        Rustq::Client.push_bulk({"class" => "NoopJob", "queue" => "default", "args" => Array.new(s.size) { [] }}.merge(fields))
      end
    end

    def load_active_job
      return if defined?(::NoopActiveJob)

      require_relative "ruby/active_job_app"
      require "active_job/queue_adapters/rustq_adapter"
      ActiveJob::Base.queue_adapter = :rustq
    end

    def queue_length = @redis.client.llen("queue:default")

    # rustq keeps taken jobs in per-process in-progress lists until they are acknowledged.
    def in_progress? = !@redis.client.keys("rustq:inprogress:*").empty?

    def rust_worker_argv(binary = RUST_WORKER, extra = [])
      [binary, "-C", @config, "-c", CONCURRENCY.to_s, "-q", "default", "-l", "warn", *extra]
    end

    def sidekiq_argv
      [RUBY, "-W0", "-S", "sidekiq", "-r", SIDEKIQ_APP, "-c", CONCURRENCY.to_s, "-q", "default"]
    end

    def ruby_host_argv(root = ROOT)
      [RUBY, "-W0", "-I", File.join(root, "lib"), File.join(root, "exe", "rustq-worker"), "-r", RUSTQ_APP, "-C", @config,
       "-c", CONCURRENCY.to_s, "-q", "default", "-l", "warn"]
    end

    # --ab DIR: scenarios 4, 5 and 6 for DIR's build ("before") and this one ("after"), each
    # repetition running one then the other, so both see the same machine state. The Sidekiq
    # column of these rows holds "before"; the ratio is after / before.
    def ab_scenarios
      noop = @quick ? 50_000 : 100_000
      ruby = @quick ? 20_000 : 200_000
      cases = [
        ["4ab", "no-op Rust handler in `rustq-worker` (#{noop} jobs)", noop, false, {},
         ->(root) { rust_worker_argv(File.join(root, "target", "release", "rustq-worker"), ["--noop", "NoopJob"]) }],
        ["5ab", "Ruby no-op jobs in the Ruby host (#{ruby} jobs)", ruby, false, {}, ->(root) { ruby_host_argv(root) }],
        ["6ab", "ActiveJob no-op jobs in the Ruby host (#{ruby} jobs)", ruby, true, { "BENCH_ACTIVE_JOB" => "1" },
         ->(root) { ruby_host_argv(root) }]
      ]
      cases.each do |id, name, count, active_job, env, argv|
        next if @only && !@only.include?(id.to_i)

        before = []
        after = []
        @runs.times do |i|
          before << drain(argv.call(@ab), count, active_job: active_job, env: env)
          after << drain(argv.call(ROOT), count, active_job: active_job, env: env)
          log format("%s run %d: before %.0f, after %.0f jobs/s (%+.1f %%)", id, i + 1, before.last, after.last,
                     (after.last / before.last - 1) * 100)
        end
        b = Stat.of(before)
        a = Stat.of(after)
        spread = ->(st) { format("%.1f %%", (st.max - st.min) / st.median * 100) }
        row(id, "A/B: #{name}; Sidekiq column = before (#{@ab})", "jobs/s", a, b,
            note: "spread of runs: before #{spread.call(b)}, after #{spread.call(a)}")
      end
    end

    # Pre-loads `count` jobs, starts `processes` workers, and times from the first job taken to
    # the last one acknowledged (queue empty, no in-progress list). Worker boot is not timed.
    # Returns jobs/s; records the workers' peak RSS under `rss_key`.
    def drain(argv, count, processes: 1, active_job: false, rss_key: nil, env: {}, fields: {}, batch: false)
      @redis.flush
      load_jobs(count, active_job: active_job, fields: fields, batch: batch)
      workers = Array.new(processes) do |i|
        WorkerProcess.new(argv, env: { "REDIS_URL" => @redis.url }.merge(env), log: File.join(@dir, "worker-#{rss_key}-#{i}.log"))
      end
      time_drain(workers, count, processes, rss_key)
    ensure
      workers&.each(&:stop)
    end

    def time_drain(workers, count, processes, rss_key)
      first = finished = nil
      peak = 0
      next_sample = 0
      deadline = Bench.now + 300
      loop do
        t = Bench.now
        length = queue_length
        first ||= t if length < count
        if length.zero? && !in_progress?
          finished = t
          break
        end
        if t >= next_sample
          peak = [peak, workers.sum { |w| w.rss_kb || 0 }].max
          next_sample = t + 0.05
        end
        raise "workers did not drain #{count} jobs (#{length} left); see #{@dir}" if t > deadline || workers.none?(&:alive?)

        sleep 0.002
      end
      workers.each(&:stop)
      @rss[rss_key] << peak / processes if rss_key
      processed = @redis.client.get("stat:processed").to_i
      log "  warning: stat:processed=#{processed} after draining #{count} jobs" if processed != count
      count / (finished - first)
    end

    # 10: what the HTTP endpoint costs. The same no-op drain as scenario 4 with `--http` on (its
    # /metrics scraped every second, 15× a usual Prometheus interval) and off, runs interleaved.
    # The rustq column is "on", the Sidekiq column "off".
    def metrics_scenario
      count = @quick ? 100_000 : 300_000
      on = []
      off = []
      scrapes = 0
      @runs.times do |i|
        off << drain(rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"]), count)
        port = free_port
        scraper = Thread.new do
          loop do
            TCPSocket.open("127.0.0.1", port) do |s|
              s.write("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
              scrapes += 1 if s.read.start_with?("HTTP/1.1 200")
            end
          rescue SystemCallError
            nil
          ensure
            sleep 0.1
          end
        end
        on << drain(rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob", "--http", "127.0.0.1:#{port}"]), count)
        scraper.kill
        log format("10 run %d: off %.0f, on %.0f jobs/s (%d scrapes so far)", i + 1, off.last, on.last, scrapes)
      end
      row("10", "no-op jobs with the metrics endpoint on (scraped every 0.1 s) vs off, `rustq-worker` both (#{number(count, "jobs")})",
          "jobs/s", Stat.of(on), Stat.of(off), target: target("≥ 0.95×") { |_, _, r| r && r >= 0.95 },
          note: "columns: on (rustq), off (Sidekiq column)")
    end

    # 12: what limits cost. (a) A unique job's push (its lock taken in the push's own Lua step)
    # against a plain push, both rustq's `perform_async`. (b) No-op jobs that each pass a
    # concurrency check (one key, a limit of 1,000 that never binds: the cost of the slot taken and
    # given back, not of waiting) against the same jobs without, `rustq-worker` both, interleaved.
    def limits_scenario
      count = @quick ? 5_000 : 20_000
      unique = repeat("12a rustq unique single") { timed_script("push.rb", %w[rustq single], count, "BENCH_UNIQUE" => "1") }
      plain = repeat("12a rustq plain single") { push_once("rustq", "single", count) }
      row("12a", "single push of a unique job (`unique_for: 600`) vs a plain one, rustq `perform_async` both",
          "jobs/s", unique, plain, note: "columns: unique (rustq), plain (Sidekiq column)")
      jobs = @quick ? 50_000 : 100_000
      limited = []
      free = []
      argv = rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"])
      @runs.times do |i|
        free << drain(argv, jobs)
        limited << drain(argv, jobs, fields: { "concurrency" => { "key" => "bench", "limit" => 1000 } })
        log format("12b run %d: without %.0f, with a concurrency limit %.0f jobs/s", i + 1, free.last, limited.last)
      end
      row("12b", "no-op jobs each taking and giving back a concurrency slot (one key, limit 1,000) vs no limit, `rustq-worker` both (#{number(jobs, "jobs")})",
          "jobs/s", Stat.of(limited), Stat.of(free), note: "columns: limited (rustq), unlimited (Sidekiq column)")
    end

    # 13: what batches cost. (a) 100,000 no-op jobs of one batch (each counted in the batch in
    # its outcome's step) against the same jobs without, `rustq-worker` both, interleaved per run.
    # (b) A batch's `jobs { }` around a 100,000-job push_bulk against the bare push_bulk.
    def batches_scenario
      jobs = @quick ? 50_000 : 100_000
      batched = []
      free = []
      argv = rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"])
      @runs.times do |i|
        free << drain(argv, jobs)
        batched << drain(argv, jobs, batch: true)
        log format("13a run %d: without %.0f, in one batch %.0f jobs/s", i + 1, free.last, batched.last)
      end
      row("13a", "no-op jobs of one batch vs the same jobs without, `rustq-worker` both (#{number(jobs, "jobs")})",
          "jobs/s", Stat.of(batched), Stat.of(free), target: target("≥ 0.5×") { |_, _, r| r && r >= 0.5 },
          note: "columns: in a batch (rustq), without (Sidekiq column)")
      count = 100_000
      batch = repeat("13b rustq batch jobs{} + push_bulk") { timed_script("push.rb", %w[rustq batch], count) }
      bulk = repeat("13b rustq push_bulk") { push_once("rustq", "bulk", count) }
      row("13b", "`Rustq::Batch#jobs { push_bulk }` with 100,000 jobs vs the bare `push_bulk`, rustq both",
          "jobs/s", batch, bulk, note: "columns: in a batch (rustq), bare (Sidekiq column)")
    end

    PEERS = File.expand_path("../shared/peers", ROOT)
    CRON_APP = File.join(__dir__, "ruby", "cron_app.rb")

    # An idle worker with 10,000 recurring jobs (made with sidekiq-cron's own API, none due):
    # Redis commands per second and CPU of the whole process, `rustq-worker` against Sidekiq 7.3
    # with sidekiq-cron 2.3.1's poller, and the same two with no schedule (what the scheduler adds).
    def cron_scenario
      with = File.join(PEERS, "with-sidekiq")
      unless File.executable?(with)
        log "11 skipped: #{PEERS}/with-sidekiq (sidekiq-cron 2.3.1) not found"
        return
      end
      count = @quick ? 2_000 : 10_000
      # Five minutes: one full read of the schedules by rustq (it reads them when their number
      # changes and every 5 min), and 7-20 polls of sidekiq-cron's (every 15-45 s).
      window = @quick ? 60 : 300
      figures = {}
      [0, count].each do |schedules|
        @redis.flush
        if schedules.positive?
          out = IO.popen({ "REDIS_URL" => @redis.url }, [with, "7", RUBY, "-W0", CRON_APP, "make", schedules.to_s],
                         err: [:child, :out], &:read)
          raise "making #{schedules} schedules failed: #{out}" unless $?.success?
        end
        { "rustq" => rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"]),
          "sidekiq" => [with, "7", "sidekiq", "-r", CRON_APP, "-c", CONCURRENCY.to_s, "-q", "default"] }.each do |side, argv|
          figures[[side, schedules]] = idle_cost(argv, window, "cron-#{side}-#{schedules}")
          log format("11 %s, %d schedules: %.1f Redis commands/s, %.2f %% of a core", side, schedules, *figures[[side, schedules]])
        end
      end
      stat = ->(v) { Stat.of([v]) }
      name = "idle worker with #{number(count, "")} schedules (sidekiq-cron's, none due; #{window} s): `rustq-worker` vs Sidekiq 7.3 + sidekiq-cron 2.3.1"
      note = format("with no schedule: rustq %.1f commands/s, %.2f %%; Sidekiq %.1f commands/s, %.2f %%",
                    *figures[["rustq", 0]], *figures[["sidekiq", 0]])
      row("11", "#{name}, Redis commands", "commands/s", stat.call(figures[["rustq", count]][0]),
          stat.call(figures[["sidekiq", count]][0]), better: :lower, note: note)
      row("11", "#{name}, CPU", "% of a core", stat.call(figures[["rustq", count]][1]),
          stat.call(figures[["sidekiq", count]][1]), better: :lower, note: note)
    end

    # Starts `argv`, lets it settle 15 s (boot and its first read of the schedules, sidekiq-cron's
    # initial wait), then measures `window` seconds: Redis commands per second (all clients:
    # only this worker talks to Redis) and the process's CPU in % of one core.
    def idle_cost(argv, window, label)
      worker = WorkerProcess.new(argv, env: { "REDIS_URL" => @redis.url }, log: File.join(@dir, "#{label}.log"))
      sleep 15
      calls = lambda do
        @redis.client.call("INFO", "commandstats").lines.grep(/\Acmdstat_/).sum do |line|
          line.start_with?("cmdstat_info:") ? 0 : line[/calls=(\d+)/, 1].to_i
        end
      end
      cpu = -> { File.read("/proc/#{worker.pid}/stat").split(") ").last.split[11, 2].sum(&:to_i) / 100.0 }
      c0 = calls.call
      t0 = Bench.now
      u0 = cpu.call
      sleep window
      commands = (calls.call - c0) / (Bench.now - t0)
      used = (cpu.call - u0) / (Bench.now - t0) * 100
      worker.stop
      [commands, used]
    end

    def free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    def rust_processing_scenario
      count = @quick ? 50_000 : 100_000
      rustq = repeat("4 rustq-worker") { drain(rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"]), count, rss_key: :rustq) }
      sidekiq = repeat("4 sidekiq") { drain(sidekiq_argv, count, rss_key: :sidekiq) }
      @sidekiq_noop = sidekiq
      row("4", "processing no-op jobs: Rust handler in `rustq-worker` vs Ruby in Sidekiq (#{count.to_s.reverse.scan(/\d{1,3}/).join(",").reverse} jobs, -c #{CONCURRENCY})",
          "jobs/s", rustq, sidekiq,
          target: target("≥ 20× and ≥ 100,000/s") { |q, _, r| r && r >= 20 && q.median >= 100_000 })
      roofline
      job_roofline(count, rustq)
    end

    def roofline
      lpush = []
      rpop = []
      @runs.times do
        @redis.flush
        out = IO.popen(["redis-benchmark", "-p", @redis.port.to_s, "-q", "--csv", "-P", "16", "-n", "1000000",
                        "-t", "lpush,rpop"], err: [:child, :out], &:read)
        out.each_line do |line|
          name, rps = line.delete('"').split(",")
          lpush << rps.to_f if name == "LPUSH"
          rpop << rps.to_f if name == "RPOP"
        end
        log "4r redis-benchmark: LPUSH #{lpush.last} RPOP #{rpop.last}"
      end
      row("4r", "Redis roofline: `redis-benchmark -P 16` LPUSH", "ops/s", Stat.of(lpush), nil)
      row("4r", "Redis roofline: `redis-benchmark -P 16` RPOP", "ops/s", Stat.of(rpop), nil)
    end

    # The in-progress list of the 4j row, named as rustq names a process's list for a queue.
    JOB_ROOFLINE_INPROGRESS = "rustq:inprogress:bench:default"

    # The roofline for one job: the Redis commands a job costs rustq end to end, sent pipelined by a
    # bare client (`redis-cli --pipe`) on the same Redis. Per job, as rustq sends them: push =
    # `SADD queues default` + `LPUSH queue:default <payload>`, fetch = `LMOVE queue:default
    # <in-progress list> RIGHT LEFT`, acknowledge = `LREM <in-progress list> -1 <payload>` (the
    # per-job stats an acknowledgement writes are batched by the engine, and left out). Three phases,
    # one `redis-cli --pipe` each: every push, then every fetch, then every acknowledgement; each LREM
    # finds its job at the tail of the in-progress list, as in the engine. The commands are written
    # to files before the clock starts; the figure is `count` over the three phases' wall-clock time.
    # Scenario 4's rustq figure (`noop`) is logged as a fraction of it, and of fetch + acknowledge
    # alone, since scenario 4 times no push.
    def job_roofline(count, noop)
      paths = write_job_commands(count)
      commands = { push: count * 2, fetch: count, ack: count }
      splits = []
      stat = repeat("4j redis-cli --pipe jobs/s") do
        @redis.flush
        seconds = paths.to_h { |phase, path| [phase, pipe_seconds(path, commands.fetch(phase))] }
        left = queue_length + @redis.client.llen(JOB_ROOFLINE_INPROGRESS)
        raise "4j: #{left} jobs left in queue:default and #{JOB_ROOFLINE_INPROGRESS} after redis-cli --pipe" unless left.zero?

        splits << count / (seconds[:fetch] + seconds[:ack])
        log format("  push %.3f s, fetch %.3f s, acknowledge %.3f s", seconds[:push], seconds[:fetch], seconds[:ack])
        count / seconds.values.sum
      end
      fetch_ack = Stat.of(splits)
      share = noop.median / stat.median if noop && stat
      if share
        log format("4j: rustq no-op = %.0f %% of the roofline (%s of %s jobs/s); of fetch + acknowledge alone " \
                   "(%s jobs/s, what scenario 4 times): %.0f %%", share * 100, number(noop.median, "jobs/s"),
                   number(stat.median, "jobs/s"), number(fetch_ack.median, "jobs/s"), noop.median / fetch_ack.median * 100)
      end
      row("4j", "roofline for a job: push + fetch + acknowledge pipelined by `redis-cli --pipe` (#{number(count, "jobs/s")} jobs)",
          "jobs/s", stat, nil, note: share && format("rustq no-op = %.0f %% of this", share * 100))
    ensure
      paths&.each_value { |path| FileUtils.rm_f(path) }
    end

    # Writes the 4j row's commands for `count` jobs as RESP (bulk strings with their byte lengths),
    # one file per phase; returns { phase => path }.
    def write_job_commands(count)
      now = Time.now.to_f
      payloads = Array.new(count) do |i|
        # A Sidekiq payload of ~190 bytes, each with its own jid.
        JSON.generate("retry" => true, "queue" => "default", "class" => "NoopJob", "args" => [i, "gid://bench/User/#{i}"],
                      "jid" => SecureRandom.hex(12), "created_at" => now, "enqueued_at" => now)
      end
      fetch = resp_command("LMOVE", "queue:default", JOB_ROOFLINE_INPROGRESS, "RIGHT", "LEFT")
      phases = {
        push: ->(payload) { resp_command("SADD", "queues", "default") << resp_command("LPUSH", "queue:default", payload) },
        fetch: ->(_) { fetch },
        ack: ->(payload) { resp_command("LREM", JOB_ROOFLINE_INPROGRESS, "-1", payload) }
      }
      phases.to_h do |phase, command|
        path = File.join(@dir, "job-roofline-#{phase}.resp")
        File.open(path, "wb") { |f| payloads.each_slice(10_000) { |slice| f.write(slice.map(&command).join) } }
        [phase, path]
      end
    end

    def resp_command(*words)
      out = String.new("*#{words.size}\r\n", encoding: Encoding::BINARY)
      words.each { |w| out << "$#{w.bytesize}\r\n" << w.b << "\r\n" }
      out
    end

    # Runs `redis-cli --pipe` on the commands in `path`; the wall-clock seconds it took, after
    # checking that Redis answered all `commands` without an error.
    def pipe_seconds(path, commands)
      started = Bench.now
      out = IO.popen(["redis-cli", "-h", "127.0.0.1", "-p", @redis.port.to_s, "--pipe"], in: path, err: [:child, :out], &:read)
      seconds = Bench.now - started
      errors, replies = out[/errors: (\d+), replies: (\d+)/] && [$1.to_i, $2.to_i]
      unless $?.success? && errors&.zero? && replies == commands
        raise "redis-cli --pipe: expected #{commands} replies and no error, got: #{out.strip}"
      end

      seconds
    end

    def ruby_processing_scenario(id, name, active_job:)
      # Long enough that start-up (first fetches, method caches) is a small part of the time: at
      # 50,000 ActiveJob jobs (1.5 s for rustq) it was ~4 % of rustq's time.
      count = @quick ? 20_000 : 200_000
      env = active_job ? { "BENCH_ACTIVE_JOB" => "1" } : {}
      name = "#{name} (#{count} jobs, -c #{CONCURRENCY})"
      rustq = if File.exist?(RUBY_HOST)
                repeat("#{id} rustq Ruby host") { drain(ruby_host_argv, count, active_job: active_job, env: env, rss_key: :"ruby_host_#{id}") }
              else
                log "#{id}: pending (Ruby host not built: no #{RUBY_HOST})"
                nil
              end
      sidekiq = repeat("#{id} sidekiq") { drain(sidekiq_argv, count, active_job: active_job, env: env) }
      row(id, name, "jobs/s", rustq, sidekiq, note: rustq ? nil : "pending (Ruby host not built)")
    end

    # --- latency ---------------------------------------------------------------------------

    def latency_scenario
      rate = 1_000
      seconds = @quick ? 4 : 6
      rustq = []
      sidekiq = []
      @runs.times do |i|
        rustq << latency_once(rust_worker_argv(LATENCY_WORKER), rate, seconds, :rustq_latency)
        log "7 rustq run #{i + 1}: p50 #{rustq.last[0].round(3)} ms, p99 #{rustq.last[1].round(3)} ms"
        sidekiq << latency_once(sidekiq_argv, rate, seconds, :sidekiq_latency)
        log "7 sidekiq run #{i + 1}: p50 #{sidekiq.last[0].round(3)} ms, p99 #{sidekiq.last[1].round(3)} ms"
      end
      goal = target("≤ Sidekiq") { |_, _, r| r && r >= 1 }
      row("7", "push → start latency at #{rate} jobs/s, p50", "ms", Stat.of(rustq.map(&:first)), Stat.of(sidekiq.map(&:first)),
          better: :lower, target: goal)
      row("7", "push → start latency at #{rate} jobs/s, p99", "ms", Stat.of(rustq.map(&:last)), Stat.of(sidekiq.map(&:last)),
          better: :lower, target: goal)
    end

    # Starts a worker on an empty queue, pushes LatencyJob at a steady rate (each job carries its
    # push time), and reads back what the jobs recorded. The first second is warm-up.
    def latency_once(argv, rate, seconds, rss_key)
      @redis.flush
      worker = WorkerProcess.new(argv, env: { "REDIS_URL" => @redis.url }, log: File.join(@dir, "worker-#{rss_key}.log"))
      measure_latency(worker, rate, seconds, rss_key)
    ensure
      worker&.stop
    end

    def measure_latency(worker, rate, seconds, rss_key)
      wait_for_process_entry(worker)
      sleep 1
      r = @redis.client
      r.sadd("queues", "default")
      total = rate * seconds
      warmup = rate
      peak = 0
      t0 = Bench.now
      total.times do |i|
        delay = t0 + i.fdiv(rate) - Bench.now
        sleep delay if delay.positive?
        r.lpush("queue:default", JSON.generate("retry" => true, "queue" => "default", "class" => "LatencyJob",
                                               "args" => [Time.now.to_f], "jid" => SecureRandom.hex(12),
                                               "created_at" => Time.now.to_f, "enqueued_at" => Time.now.to_f))
        peak = [peak, worker.rss_kb || 0].max if (i % 500).zero?
      end
      deadline = Bench.now + 30
      sleep 0.05 while r.llen("bench:latency") < total && Bench.now < deadline
      latencies = r.lrange("bench:latency", warmup, -1).map { |v| v.to_f * 1000 }.sort
      @rss[rss_key] << peak
      raise "only #{latencies.size + warmup} of #{total} latency jobs ran; see #{@dir}" if latencies.size < total - warmup

      [percentile(latencies, 0.50), percentile(latencies, 0.99)]
    end

    def percentile(sorted, p) = sorted[((sorted.size - 1) * p).round]

    def wait_for_process_entry(worker)
      deadline = Bench.now + 30
      until @redis.client.scard("processes").positive?
        raise "worker did not start; see #{@dir}" if Bench.now > deadline || !worker.alive?

        sleep 0.05
      end
    end

    # --- memory ----------------------------------------------------------------------------

    def idle_rss(argv, env = {})
      @redis.flush
      worker = WorkerProcess.new(argv, env: { "REDIS_URL" => @redis.url }.merge(env), log: File.join(@dir, "worker-idle.log"))
      wait_for_process_entry(worker)
      sleep 3
      worker.rss_kb / 1024.0
    ensure
      worker&.stop
    end

    def memory_scenario
      rustq = repeat("8 rustq-worker idle RSS MB") { idle_rss(rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"])) }
      sidekiq = repeat("8 sidekiq idle RSS MB") { idle_rss(sidekiq_argv) }
      row("8", "RSS idle (`rustq-worker` vs `sidekiq`)", "MB", rustq, sidekiq, better: :lower,
          target: target("rustq < 10 MB") { |q, _, _| q && q.median < 10 })
      loaded_q = Stat.of((@rss[:rustq] + @rss[:rustq_latency]).map { |kb| kb / 1024.0 })
      loaded_s = Stat.of((@rss[:sidekiq] + @rss[:sidekiq_latency]).map { |kb| kb / 1024.0 })
      row("8", "RSS under load (peak during scenarios 4 and 7)", "MB", loaded_q, loaded_s, better: :lower)
      if File.exist?(RUBY_HOST)
        host = repeat("8 Ruby host idle RSS MB") { idle_rss(ruby_host_argv) }
        row("8", "RSS idle (Ruby host `rustq-worker` vs `sidekiq`)", "MB", host, sidekiq, better: :lower)
      end
    end

    # --- scaling ---------------------------------------------------------------------------

    def scaling_scenario
      count = @quick ? 50_000 : 200_000
      [1, 2, 4].each do |n|
        rustq = repeat("9 #{n} × rustq-worker") { drain(rust_worker_argv(RUST_WORKER, ["--noop", "NoopJob"]), count, processes: n) }
        sidekiq = if n <= 2 && !@quick
                    repeat("9 #{n} × sidekiq") { drain(sidekiq_argv, count / 4, processes: n) }
                  end
        row("9", "scaling: #{n} worker process#{"es" if n > 1} (rustq #{count / 1000}k no-op jobs#{", Sidekiq #{count / 4000}k" if sidekiq})",
            "jobs/s", rustq, sidekiq)
      end
    end

    # --- report ----------------------------------------------------------------------------

    def machine
      cpu = File.foreach("/proc/cpuinfo").find { |l| l.start_with?("model name") }&.split(":", 2)&.last&.strip
      {
        "cpu" => cpu, "nproc" => Etc.nprocessors,
        "memory" => `free -h`.lines[1]&.split&.at(1),
        "kernel" => `uname -r`.strip,
        "ruby" => RUBY_VERSION, "sidekiq" => sidekiq_version,
        "redis" => `redis-server --version`[/v=(\S+)/, 1],
        "rustc" => `rustc --version`.strip
      }
    end

    def sidekiq_version
      require "sidekiq/version"
      Sidekiq::VERSION
    end

    def report(seconds)
      info = machine
      table = render_table(info, seconds)
      puts table
      results = File.join(__dir__, "results")
      FileUtils.mkdir_p(results)
      File.write(File.join(results, "latest.json"),
                 JSON.pretty_generate("date" => Time.now.utc.iso8601, "machine" => info, "runs" => @runs,
                                      "seconds" => seconds.round(1), "scenarios" => @rows))
      File.write(File.join(results, "latest.md"), table)
      log "wrote bench/results/latest.json and bench/results/latest.md"
    end

    def render_table(info, seconds)
      lines = []
      lines << "rustq vs Sidekiq #{info["sidekiq"]} — #{Time.now.utc.strftime("%Y-%m-%d %H:%M UTC")}, " \
               "#{info["nproc"]} × #{info["cpu"]}, #{info["memory"]} RAM, Ruby #{info["ruby"]}, Redis #{info["redis"]}, " \
               "#{@runs} runs each, #{seconds.round} s in all"
      lines << ""
      lines << "| # | scenario | unit | rustq median (min–max) | Sidekiq median (min–max) | rustq advantage | target | met |"
      lines << "|---|---|---|---|---|---|---|---|"
      @rows.each do |r|
        met = case r["met"] when true then "yes" when false then "**no**" else "" end
        rustq = r["rustq"] ? figure(r["rustq"], r["unit"]) : (r["note"] || "—")
        lines << "| #{r["id"]} | #{r["scenario"]} | #{r["unit"]} | #{rustq} | #{r["sidekiq"] ? figure(r["sidekiq"], r["unit"]) : "—"} | " \
                 "#{r["ratio"] ? format("%.1f×", r["ratio"]) : "—"} | #{r["target"] || ""} | #{met} |"
      end
      lines << ""
      lines << "rustq advantage: rustq ÷ Sidekiq for rates, Sidekiq ÷ rustq for latency and memory (> 1× means rustq is better)."
      lines.join("\n") + "\n"
    end

    def figure(stat, unit)
      fmt = ->(v) { number(v, unit) }
      "#{fmt.(stat["median"])} (#{fmt.(stat["min"])}–#{fmt.(stat["max"])})"
    end

    def number(value, unit)
      case unit
      when "ms" then format("%.2f", value)
      when "MB" then format("%.1f", value)
      else value.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
      end
    end
  end
end

options = { runs: 3, only: nil, quick: false }
OptionParser.new do |o|
  o.banner = "usage: bench/run [--runs N] [--only 1,4,7] [--quick] [--ab DIR]"
  o.on("--ab DIR", "A/B of scenarios 4, 5 and 6 only: DIR's build (a checkout with target/release and the " \
                   "compiled lib/) against this one, interleaved run by run; no Sidekiq") { |d| options[:ab] = File.expand_path(d) }
  o.on("--runs N", Integer, "measurements per figure (default 3)") { |n| options[:runs] = n }
  o.on("--only LIST", "scenarios to run, e.g. 1,4,7") { |l| options[:only] = l.split(",").map(&:to_i) }
  o.on("--quick", "smaller job counts (a smoke test, not for quoting)") { options[:quick] = true }
end.parse!
require "time"
Bench::Runner.new(options).run
