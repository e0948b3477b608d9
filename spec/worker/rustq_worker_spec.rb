# frozen_string_literal: true

require "fileutils"
require "net/http"
require "sidekiq"
require "socket"
require "tmpdir"
require "sidekiq/api"
require_relative "../support/rustq_worker_process"

# `rustq-worker` (exe/) runs an app's own jobs on the rustq engine inside the app's Ruby process:
# a plain Ruby app loaded with -r, and a Rails 6.1 app booted from its root.
RSpec.describe "rustq-worker" do
  let(:plain_app) { "./spec/fixtures/worker_plain_app.rb" }
  let(:rails_root) { File.join(RustqWorkerProcess::ROOT, "spec", "fixtures", "worker_rails_app") }
  let(:workers) { [] }

  after { workers.each(&:kill) }

  def worker(*args, chdir: RustqWorkerProcess::ROOT, env: {})
    RustqWorkerProcess.new(*args, chdir: chdir, env: env).start.tap { |w| workers << w }
  end

  def ledger
    redis.lrange("ledger", 0, -1).map { |json| JSON.parse(json) }
  end

  # Runs Ruby code in the Rails app (booted, not working); returns what it printed last, parsed.
  def in_rails_app(code)
    script = "require './config/environment'\n#{code}"
    out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", File.join(RustqWorkerProcess::ROOT, "lib"), "-e", script],
      chdir: rails_root, err: [:child, :out], &:read)
    expect($?).to be_success, out
    JSON.parse(out.lines.last)
  end

  def processes
    Sidekiq::ProcessSet.new.to_a
  end

  describe "command line" do
    def run_cli(*args, env: {})
      out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}.merge(env), ["ruby", "-I", "lib", RustqWorkerProcess::EXE, *args],
        chdir: RustqWorkerProcess::ROOT, err: [:child, :out], &:read)
      [$?.exitstatus, out]
    end

    it "shares the standalone binary's flags: --help exits 0, bad options and missing apps exit 2" do
      status, out = run_cli("--help")
      expect([status, out]).to match([0, a_string_including("Usage: rustq-worker", "--concurrency", "--require")])
      status, out = run_cli("--concurrency", "0")
      expect([status, out]).to match([2, a_string_including("--concurrency must be at least 1")])
      status, out = run_cli("-r", "./spec/fixtures/no_such_app.rb")
      expect([status, out]).to match([2, a_string_including("no such file or directory to require")])
      status, out = run_cli("-r", "spec")
      expect([status, out]).to match([2, a_string_including("is not a Rails app")])
      status, out = run_cli("-r", "./spec/fixtures/worker_plain_app.rb", "--redis-url", "nosuchscheme://x")
      expect([status, out]).to match([1, a_string_including("rustq-worker failed")])
      # Warnings silenced (RUBYOPT=-W0, common in production): a failed boot still says why.
      status, out = run_cli("-r", "./spec/fixtures/worker_plain_app.rb", "--redis-url", "nosuchscheme://x", env: {"RUBYOPT" => "-W0"})
      expect([status, out]).to match([1, a_string_including("rustq-worker failed")])
    end

    it "refuses Sidekiq 7 capsules made in Sidekiq.configure_server, whose queues it would never work" do
      # (The bad Redis URL ends the run should the capsule get past boot.)
      status, out = run_cli("-r", "./spec/fixtures/worker_capsules_app.rb", "--redis-url", "nosuchscheme://x")
      expect([status, out]).to match([2, a_string_including("Sidekiq capsules (single", "one rustq-worker per capsule")])
    end
  end

  describe "a plain Ruby app (-r FILE)" do
    it "renders ERB in the config file with Ruby, as Sidekiq renders sidekiq.yml, and boots the file it names" do
      config = File.join(Dir.mktmpdir("rustq-spec"), "sidekiq.yml")
      File.write(config, <<~YAML)
        :concurrency: <%= [2, 3].sum %>
        :tag: <%= ENV.fetch("RUSTQ_SPEC_UNSET", "erb").upcase %>
        :require: #{plain_app}
      YAML
      jid = Rustq::Client.push("class" => "RecordJob", "args" => ["booted from the config's require"])
      w = worker("-C", config)
      w.await("the job") { ledger.any? }
      expect(ledger.first).to include("jid" => jid)
      process = w.await("the process in Sidekiq::ProcessSet") { processes.first }
      expect([process["concurrency"], process["tag"]]).to eq([5, "ERB"])
      expect(w.stop.exitstatus).to eq(0)

      File.write(config, ":concurrency: <%= NoSuchConstant %>\n")
      out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", "lib", RustqWorkerProcess::EXE, "-r", plain_app, "-C", config],
        chdir: RustqWorkerProcess::ROOT, err: [:child, :out], &:read)
      expect([$?.exitstatus, out]).to match([2, a_string_including("sidekiq.yml", "NoSuchConstant")])
    end

    it "interrupts a Sidekiq::IterableJob when the process quiets, keeps its cursor, and resumes it in the next process, never as a failure" do
      skip "Sidekiq #{Sidekiq::VERSION} has no Sidekiq::IterableJob (7.3+; bin/test-interop runs this)" unless defined?(Sidekiq::IterableJob)

      app = "./spec/fixtures/worker_iterable_app.rb"
      jid = Sidekiq::Client.push("class" => "StepJob", "args" => [40])
      w = worker("-r", app, "-c", "2")
      w.await("a few steps") { redis.llen("steps") >= 3 }
      w.signal("TSTP") # quiet: as Sidekiq's processors, the job is told it is interrupted
      w.await("the interrupted job back on its queue") { redis.llen("queue:default") == 1 }
      first_run = redis.lrange("steps", 0, -1).map(&:to_i)
      expect(first_run.size).to be < 40
      expect(redis.hget("it-#{jid}", "c")).to eq(first_run.size.to_s) # the cursor: the next step
      expect(JSON.parse(redis.lindex("queue:default", 0))).to include("jid" => jid, "args" => [40])
      expect(w.stop.exitstatus).to eq(0)

      w2 = worker("-r", app, "-c", "2")
      w2.await("the job resumed and finished") { redis.llen("steps") == 40 && redis.llen("queue:default").zero? && redis.exists("it-#{jid}").zero? }
      expect(redis.lrange("steps", 0, -1).map(&:to_i)).to eq((0...40).to_a) # each step once, in order
      expect(w2.stop.exitstatus).to eq(0)
      expect([Sidekiq::RetrySet.new.size, Sidekiq::DeadSet.new.size, Sidekiq::Stats.new.failed]).to eq([0, 0, 0])
      expect(w.log + w2.log).to include("StepJob JID-#{jid} interrupted; back to its queue to resume")
    end

    it "runs sidekiq-cron's poller as Sidekiq's Launcher would: schedules enqueue while it works, stop when it quiets" do
      skip "sidekiq-cron 2.x is not on the load path (bin/test-interop runs this with Sidekiq 7.3 and 8.1)" unless $LOAD_PATH.any? { |dir| dir.include?("sidekiq-cron") }

      w = worker("-r", "./spec/fixtures/worker_cron_app.rb", "-c", "2")
      w.await("three ticks run by rustq-worker") { redis.llen("ticks") >= 3 }
      expect(w.log).to include("sidekiq-cron is loaded: its poller runs in this process, every 1 s")
      job = redis.hgetall("cron_job:default:every second")
      expect(job).to include("klass" => "TickJob", "status" => "enabled")
      expect(job["last_enqueue_time"]).not_to be_empty
      expect(redis.zcard("cron_job:default:every second:enqueued")).to be >= 3

      w.signal("TSTP")
      w.await("the poller stopped") { w.log.include?("sidekiq-cron's poller stopped") }
      enqueued = redis.zcard("cron_job:default:every second:enqueued")
      sleep 2.5 # a running poller would claim two more ticks meanwhile
      expect(redis.zcard("cron_job:default:every second:enqueued")).to eq(enqueued)
      expect(w.stop.exitstatus).to eq(0)
    end

    it "runs ActiveJob jobs that the Sidekiq under test's own adapter enqueued (perform_later, and perform_all_later on Rails 7.1+)" do
      # Sidekiq 7.x keeps its wrapper in sidekiq/rails; 8.x's adapter needs ActiveJob >= 7.0.
      require "sidekiq/rails" if Sidekiq::VERSION.start_with?("7.")
      require "active_job/queue_adapters/sidekiq_adapter"
      stub_const("HelloJob", Class.new(ActiveJob::Base) {
        self.queue_adapter = :sidekiq
        def perform(*) = nil
      })
      single = HelloJob.perform_later("single")
      names = ["single"]
      if ActiveJob.respond_to?(:perform_all_later)
        ActiveJob.perform_all_later([HelloJob.new("bulk 1"), HelloJob.new("bulk 2")])
        names += ["bulk 1", "bulk 2"]
      end
      # 8.x names its own wrapper; 6.x (Rails' adapter) and 7.3 (its subclass) write JobWrapper.
      wrapper = Sidekiq::VERSION >= "8" ? "Sidekiq::ActiveJob::Wrapper" : "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
      expect(queue_payloads.map { |p| p["class"] }.uniq).to eq([wrapper])

      w = worker("-r", "./spec/fixtures/worker_active_job_app.rb", "-c", "2")
      hellos = w.await("every HelloJob") { (h = redis.lrange("hellos", 0, -1)).size == names.size && h }.map { |j| JSON.parse(j) }
      expect(hellos.map { |h| h["name"] }).to match_array(names)
      expect(hellos.find { |h| h["name"] == "single" }["provider_job_id"]).to eq(single.provider_job_id)
      expect(w.stop.exitstatus).to eq(0)
    end

    it "keeps Sidekiq::CurrentAttributes: Current set before perform_later through :rustq is Current inside the job, in rustq-worker and in Sidekiq" do
      require "active_support/current_attributes"
      require "sidekiq/middleware/current_attributes"
      stub_const("Current", Class.new(ActiveSupport::CurrentAttributes) { attribute :user_id })
      stub_const("WhoJob", Class.new(ActiveJob::Base) {
        self.queue_adapter = :rustq
        def perform(*) = nil
      })
      chain = Sidekiq.respond_to?(:default_configuration) ? Sidekiq.default_configuration.client_middleware : Sidekiq.client_middleware
      Sidekiq::CurrentAttributes.persist(Current) # its client half: "cattr" in every push
      begin
        Current.user_id = 42
        WhoJob.perform_later("rustq")
        WhoJob.set(queue: "sidekiq_side").perform_later("sidekiq")
      ensure
        Current.reset
        # persist adds Save to the client chain and, from Sidekiq 8, prepends Load to both chains: take
        # every one out, or later specs see a client chain that is not empty.
        chain.remove(Sidekiq::CurrentAttributes::Save)
        chain.remove(Sidekiq::CurrentAttributes::Load) if defined?(Sidekiq::CurrentAttributes::Load)
        server = Sidekiq.respond_to?(:default_configuration) ? Sidekiq.default_configuration.server_middleware : nil
        server&.remove(Sidekiq::CurrentAttributes::Load) if defined?(Sidekiq::CurrentAttributes::Load)
      end
      expect(queue_payloads.first).to have_key("cattr") # (8.x serializes it as ActiveJob arguments)

      app = "./spec/fixtures/worker_current_app.rb"
      sidekiq = SidekiqProcess.new(app, queues: %w[sidekiq_side]).start
      w = worker("-r", app, "-c", "2")
      whos = w.await("both jobs") { (list = redis.lrange("whos", 0, -1)).size == 2 && list }
      expect(whos.map { |json| JSON.parse(json) }).to contain_exactly({"side" => "rustq", "user_id" => 42}, {"side" => "sidekiq", "user_id" => 42})
    ensure
      sidekiq&.stop
    end

    it "pings systemd's watchdog from Ruby, so a process whose VM is stuck holding the GVL stops pinging" do
      dir = Dir.mktmpdir("rustq-notify")
      socket = Socket.new(:UNIX, :DGRAM)
      socket.bind(Socket.pack_sockaddr_un(File.join(dir, "notify.sock")))
      notices = []
      listen = lambda do |seconds, until_text = nil|
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
        while (left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)).positive?
          next unless IO.select([socket], nil, nil, left)

          notices << [Process.clock_gettime(Process::CLOCK_MONOTONIC), socket.recv(64)]
          break if notices.last.last == until_text
        end
      end
      # WatchdogSec=0.4: a ping every 0.2 s once the app has booted and the process is registered.
      w = worker("-r", plain_app, "-c", "2", env: {"NOTIFY_SOCKET" => File.join(dir, "notify.sock"), "WATCHDOG_USEC" => "400000"})
      listen.call(60, "READY=1")
      expect(notices.map(&:last)).to include("READY=1")
      listen.call(1.5)
      expect(notices.count { |_, text| text == "WATCHDOG=1" }).to be >= 3

      Rustq::Client.push("class" => "GvlHogJob", "args" => [3])
      listen.call(5)
      expect(ledger.map { |e| e["job"] }).to eq(["hog"])
      pings = notices.select { |_, text| text == "WATCHDOG=1" }.map(&:first)
      gaps = pings.each_cons(2).map { |a, b| b - a }
      # No ping while the job held the GVL (3 s), and pings again once it let go.
      expect(gaps.max).to be >= 2.0
      expect(pings.last).to be > pings[gaps.index(gaps.max) + 1]
      expect(w.stop.exitstatus).to eq(0)
    ensure
      socket&.close
      FileUtils.rm_rf(dir) if dir
    end

    it "hands a job's arguments to Ruby exactly as JSON.parse reads them" do
      args = '[12345678901234567890123, -98765432109876543210, 18446744073709551615, -9223372036854775808, ' \
             '0, -0, 1.5, 1e3, 2.5E-3, -0.0, 1e400, 100000000000000000000.0, 0.1, "\\u00fc \\u0000 \u00e9 \\ud83d\\ude00", ' \
             '{"a": 1, "b": [true, false, null], "a": 2, "": {}}, [], [[[]]]]'
      redis.lpush("queue:default", %({"class":"ArgsJob","args":#{args},"queue":"default","jid":"0123456789abcdef01234567"}))
      w = worker("-r", plain_app)
      entry = w.await("the job") { ledger.first }
      expected = JSON.parse(args)
      actual = Marshal.load(entry["marshal"].unpack1("m0")) # rubocop:disable Security/MarshalLoad
      expect(actual.map { |a| [a.class, a] }.inspect).to eq(expected.map { |a| [a.class, a] }.inspect)
      expect(Marshal.dump(actual)).to eq(Marshal.dump(expected))
      expect(w.stop.exitstatus).to eq(0)
    end

    it "runs Rustq::Job and Sidekiq::Worker classes pushed by rustq's and Sidekiq's clients, visible in Sidekiq::ProcessSet" do
      jids = [
        Rustq::Client.push("class" => "RecordJob", "args" => ["from rustq"]),
        Sidekiq::Client.push("class" => "SidekiqRecordJob", "args" => ["sidekiq job"]),
        Sidekiq::Client.push("class" => "RecordJob", "args" => ["from sidekiq"])
      ]
      w = worker("-r", plain_app, "-c", "2", "-g", "plain-app")
      entries = w.await("3 jobs") { ledger.size >= 3 && ledger }
      expect(entries.to_h { |e| [e["jid"], [e["job"], e["name"]]] }).to eq(
        jids[0] => ["record", "from rustq"], jids[1] => ["sidekiq", "sidekiq job"], jids[2] => ["record", "from sidekiq"]
      )

      process = w.await("the process in Sidekiq::ProcessSet") { processes.first }
      expect(process["pid"]).to eq(w.pid)
      expect(process["tag"]).to eq("plain-app")
      expect(process["concurrency"]).to eq(2)
      expect(process["identity"]).to include(":#{w.pid}:")
      expect(processes.size).to eq(1)

      # Ruby's trap handlers do not swallow the engine's signals: TTIN dumps, TSTP quiets.
      w.signal("TTIN")
      w.await("a state dump in the log") { w.log.include?("state dump") && w.log.include?("thread rustq-0") }
      w.signal("TSTP")
      w.await("the process to turn quiet") { processes.first&.stopping? }

      expect(w.stop.exitstatus).to eq(0)
      expect(processes).to be_empty
      expect([Sidekiq::Stats.new.processed, Sidekiq::Stats.new.failed]).to eq([3, 0])
    end

    it "fails jobs like Sidekiq: retries with error fields, retry_in :kill/:discard, exhausted hooks, exit/abort fail only their job, non-job constants refused" do
      Rustq::Client.push("class" => "KilledJob", "args" => ["kill"])
      Rustq::Client.push("class" => "KilledJob", "args" => ["discard"])
      exit_jid = Rustq::Client.push("class" => "ExitJob", "args" => ["exit"], "backtrace" => 3)
      abort_jid = Rustq::Client.push("class" => "ExitJob", "args" => ["abort"])
      unknown_jid = Sidekiq::Client.push("class" => "NoSuchJob", "args" => [1])
      refused = %w[Kernel File Object].to_h { |name| [Rustq::Client.push("class" => name, "args" => ["x"]), name] }
      refused[Rustq::Client.push("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "File",
        "args" => [{"job_class" => "File", "arguments" => []}])] = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
      after_jid = Rustq::Client.push("class" => "RecordJob", "args" => ["after the exits"])

      w = worker("-r", plain_app, "-c", "1")
      w.await("every job to finish") { Sidekiq::RetrySet.new.size == 3 && Sidekiq::DeadSet.new.size == 5 && ledger.size == 2 }
      expect(Process.kill(0, w.pid)).to eq(1) # exit and abort did not end the process

      retries = Sidekiq::RetrySet.new.to_h { |job| [job.jid, job] }
      expect(retries.keys).to contain_exactly(exit_jid, abort_jid, unknown_jid)
      expect(retries[exit_jid].item).to include("error_class" => "SystemExit", "error_message" => "exit", "retry_count" => 0)
      expect(retries[exit_jid].error_backtrace.size).to eq(3)
      expect(retries[exit_jid].error_backtrace.first).to include("worker_plain_app.rb")
      expect(retries[abort_jid].item).to include("error_class" => "SystemExit", "error_message" => "aborting abort")
      expect(retries[unknown_jid].item).to include("error_class" => "NameError", "error_message" => "uninitialized constant NoSuchJob")

      dead = Sidekiq::DeadSet.new.to_h { |job| [job.jid, job] }
      killed = dead.values.find { |job| job.klass == "KilledJob" }
      expect(killed.item).to include("error_class" => "ArgumentError", "error_message" => "kill me", "args" => ["kill"])
      refused.each do |jid, name|
        expect(dead.fetch(jid).item).to include("class" => name, "error_class" => "Rustq::NotAJobClass")
      end

      expect(ledger).to contain_exactly(
        {"job" => "killed", "exhausted" => killed.jid, "error" => "kill me"},
        {"job" => "record", "name" => "after the exits", "jid" => after_jid}
      )
      expect(w.stop.exitstatus).to eq(0)
      expect([Sidekiq::Stats.new.processed, Sidekiq::Stats.new.failed]).to eq([10, 9])
    end

    it "runs the app's Sidekiq.configure_server: server middleware, error and death handlers, lifecycle events" do
      # Over the time limit: the engine retries it; like Sidekiq::Shutdown, not a failure for handlers.
      slow = Rustq::Client.push("class" => "RecordJob", "args" => ["slow", 30])
      ok = Rustq::Client.push("class" => "RecordJob", "args" => ["ok"])
      skipped = Rustq::Client.push("class" => "RecordJob", "args" => ["skip"])
      sidekiq_job = Sidekiq::Client.push("class" => "SidekiqRecordJob", "args" => ["sidekiq"])
      retried = Rustq::Client.push("class" => "ExitJob", "args" => ["exit"])
      no_retry = Rustq::Client.push("class" => "ExitJob", "args" => ["abort"], "retry" => false)
      killed = Rustq::Client.push("class" => "KilledJob", "args" => ["kill"])
      exhausted = Rustq::Client.push("class" => "ExitJob", "args" => ["exit"], "retry" => 0)
      refused = Rustq::Client.push("class" => "Kernel", "args" => ["x"])

      w = worker("-r", "./spec/fixtures/worker_sidekiq_server_app.rb", "-c", "1", "--job-timeout", "2")
      w.await("every job") { Sidekiq::Stats.new.processed == 9 && Sidekiq::DeadSet.new.size == 3 }
      w.signal("TSTP")
      w.await("the quiet event") { redis.lrange("events", 0, -1).any? { |e| e.include?("quiet") } }
      expect(w.stop.exitstatus).to eq(0)

      events = redis.lrange("events", 0, -1).map { |json| JSON.parse(json) }
      names = events.map { |e| e["event"] }
      by = events.group_by { |e| e["event"] }
      # configure_server ran at boot, as in a Sidekiq server; startup before any job, heartbeat
      # once the engine has beaten.
      expect(names.first(2)).to eq(%w[booted startup])
      expect(by["booted"].first["server"]).to be(true)
      expect(by["heartbeat"].size).to eq(1)
      expect(names.last(2)).to eq(%w[quiet shutdown])

      # Middleware around every job it could instantiate (not the refused Kernel); "skip" was not run.
      expect(by["middleware"].to_h { |e| [e["jid"], e["instance"]] }).to eq(
        slow => "RecordJob", ok => "RecordJob", skipped => "RecordJob", sidekiq_job => "SidekiqRecordJob", retried => "ExitJob",
        no_retry => "ExitJob", killed => "KilledJob", exhausted => "ExitJob"
      )
      expect(by["middleware"].map { |e| e["queue"] }.uniq).to eq(["default"])
      expect(ledger.map { |e| e["name"] || e["job"] }).to contain_exactly("ok", "sidekiq", "killed")

      context = "Job raised exception"
      expect(by["error"].map { |e| [e["jid"], e["context"]] }).to contain_exactly(
        [retried, context], [no_retry, context], [killed, context], [exhausted, context], [refused, context]
      )
      # jobstr: the payload's JSON as it was in Redis.
      expect(by["error"].map { |e| e["jobstr_jid"] }).to eq(by["error"].map { |e| e["jid"] })
      # Death: retry: false (the job as it was), retry_in :kill and retries used up (with the
      # failure filled in), a refused class. Not the job that will be retried.
      expect(by["death"].map { |e| [e["jid"], e["error_class"]] }).to contain_exactly(
        [no_retry, nil], [killed, "ArgumentError"], [exhausted, "SystemExit"], [refused, nil]
      )
      expect(Sidekiq::RetrySet.new.to_h { |job| [job.jid, job["error_class"]] }).to eq(
        retried => "SystemExit", slow => "Rustq::TimeoutError"
      )
      expect(Sidekiq::DeadSet.new.map(&:jid)).to contain_exactly(killed, exhausted, refused)
      expect(Sidekiq::Stats.new.failed).to eq(6)
    end

    it "works the Redis that Sidekiq.configure_server names, unless rustq's own settings name one" do
      Rustq::Client.push("class" => "RecordJob", "args" => ["on Sidekiq's server Redis"])
      app = "./spec/fixtures/worker_sidekiq_redis_app.rb"
      # REDIS_URL names another database: Sidekiq's server would still use the one its config names.
      other_db = REDIS_SERVER.url.sub(%r{/0\z}, "/15")
      env = {"REDIS_URL" => other_db, "SIDEKIQ_SERVER_REDIS_URL" => REDIS_SERVER.url}
      w = worker("-r", app, env: env)
      w.await("the job, taken from database 0") { Sidekiq::Stats.new.processed == 1 }
      expect(Sidekiq::Queue.new.size).to eq(0)
      expect(w.log).to include("using the Redis of Sidekiq.configure_server")
      expect(w.stop.exitstatus).to eq(0)

      # --redis-url wins, as rustq's own setting.
      Rustq::Client.push("class" => "RecordJob", "args" => ["stays"])
      w = worker("-r", app, "--redis-url", other_db, env: env)
      w.await("the process on database 15") { w.log.include?("Ruby threads") }
      sleep 1
      expect(Sidekiq::Queue.new.size).to eq(1)
      expect(w.log).not_to include("using the Redis of Sidekiq.configure_server")
      expect(w.stop.exitstatus).to eq(0)
    end

    # Short jobs are handed to the Ruby threads ahead of time (WorkerOptions#dispatch_ahead): the
    # Web UI must still count only jobs a thread has begun, and quieting must give back the ones
    # no thread has begun yet.
    it "counts only started jobs as busy, and on TSTP gives back the jobs still waiting for a thread" do
      config = File.join(Dir.mktmpdir("rustq-spec"), "rustq.yml")
      File.write(config, "heartbeat_interval: 1\n")
      slow = Array.new(2) { |i| Rustq::Client.push("class" => "RecordJob", "args" => ["slow-#{i}", 6]) }
      quick = Rustq::Client.push_bulk("class" => "RecordJob", "args" => Array.new(30) { |i| ["quick-#{i}"] })
      w = worker("-r", plain_app, "-c", "2", "-C", config)
      w.await("every job taken from the queue") { Sidekiq::Queue.new.size.zero? }
      w.await("a heartbeat with both threads busy") { processes.first&.[]("busy") == 2 }
      expect(Sidekiq::Workers.new.map { |_process, _tid, work| (work.respond_to?(:job) ? work.job.jid : work["payload"]["jid"]) }).to match_array(slow)

      w.signal("TSTP")
      w.await("the 30 waiting jobs back on their queue") { Sidekiq::Queue.new.size == 30 }
      expect(Sidekiq::Queue.new.map(&:jid)).to match_array(quick)
      w.await("the slow jobs to finish") { ledger.size == 2 }
      expect(ledger.map { |e| e["name"] }).to match_array(%w[slow-0 slow-1])
      # Quiet and idle, the Ruby threads have ended for good: none is taken for dead and restarted.
      sleep 1.5
      expect(w.log).not_to include("starting a new one")
      expect(w.stop.exitstatus).to eq(0)
      expect(Sidekiq::Queue.new.size).to eq(30)
    end

    it "replaces a Ruby thread that a job ended (Thread.exit): the job fails, the worker keeps its concurrency" do
      exits = Rustq::Client.push_bulk("class" => "ThreadExitJob", "args" => [[], []])
      w = worker("-r", plain_app, "-c", "2")
      w.await("both threads replaced") { w.log.scan("starting a new one").size >= 2 }
      # Both original threads are gone: these run only on their replacements.
      jids = Rustq::Client.push_bulk("class" => "RecordJob", "args" => Array.new(4) { |i| ["after-#{i}"] })
      w.await("the jobs pushed afterwards") { ledger.size == 4 }
      expect(ledger.map { |e| e["jid"] }).to match_array(jids)
      retried = Sidekiq::RetrySet.new.to_a
      expect(retried.map(&:jid)).to match_array(exits)
      expect(retried.map { |job| job["error_class"] }.uniq).to eq(["Rustq::JobAbandoned"])
      expect(w.stop.exitstatus).to eq(0)
      expect(Sidekiq::Stats.new.failed).to eq(2)
    end

    it "frees the Ruby thread of a job over --job-timeout (the engine retries the job) for the next job" do
      slow = Rustq::Client.push("class" => "RecordJob", "args" => ["slow", 60])
      after = Rustq::Client.push("class" => "RecordJob", "args" => ["after the slow one"])
      w = worker("-r", plain_app, "-c", "1", "--job-timeout", "1")
      # One thread: the second job can only run once the first one's thread was freed.
      w.await("the second job") { ledger.any? }
      expect(ledger).to eq([{"job" => "record", "name" => "after the slow one", "jid" => after}])
      retried = w.await("the slow job in the retry set") { Sidekiq::RetrySet.new.first }
      expect(retried.jid).to eq(slow)
      expect(retried.item).to include("error_class" => "Rustq::TimeoutError")
      expect(w.stop.exitstatus).to eq(0)
    end

    it "runs only the classes of the config file's allowed_jobs, the others dead as Rustq::NotAJobClass" do
      config = Tempfile.new(["rustq", ".yml"])
      config.write("allowed_jobs: [RecordJob]\n")
      config.flush
      ran = Rustq::Client.push("class" => "RecordJob", "args" => ["allowed"])
      refused = Rustq::Client.push("class" => "ArgsJob", "args" => ["refused"])
      w = worker("-r", plain_app, "-C", config.path)
      w.await("both jobs") { ledger.any? && Sidekiq::DeadSet.new.size == 1 }
      expect(ledger.map { |e| e["jid"] }).to eq([ran])
      dead = Sidekiq::DeadSet.new.first
      expect(dead.jid).to eq(refused)
      expect(dead.item).to include("error_class" => "Rustq::NotAJobClass", "error_message" => "ArgsJob is not in allowed_jobs")
      expect(w.stop.exitstatus).to eq(0)
    end

    it "keeps no payload's long Hash keys alive once their jobs are done" do
      # Whoever writes to Redis chooses the keys: 300 distinct 100 KB keys, one job each.
      Rustq::Client.push_bulk("class" => "KeysJob", "args" => Array.new(300) { |i| [{format("%06d", i) + "k" * 100_000 => 1}] })
      w = worker("-r", plain_app, "-c", "1")
      w.await("the jobs") { Sidekiq::Queue.new.size.zero? && !redis.keys("rustq:inprogress:*").any? { |k| redis.llen(k).positive? } }
      Rustq::Client.push("class" => "BigStringsProbeJob", "args" => [])
      probe = w.await("the probe") { ledger.find { |e| e["job"] == "probe" } }
      expect(probe["big_strings"]).to be < 10
      expect(w.stop.exitstatus).to eq(0)
    end

    it "loses no job to SIGKILL: a second worker finishes every job" do
      names = (1..12).map { |i| "job-#{i}" }
      Rustq::Client.push_bulk("class" => "RecordJob", "args" => names.map { |name| [name, 0.5] })
      first = worker("-r", plain_app, "-c", "3")
      first.await("a first job to finish") { ledger.size >= 1 }
      first.signal("KILL")
      first.wait
      expect(ledger.size).to be < names.size

      second = worker("-r", plain_app, "-c", "3")
      second.await("every job") { ledger.map { |e| e["name"] }.uniq.size == names.size }
      expect(ledger.map { |e| e["name"] }.uniq).to match_array(names)
      expect(redis.llen("queue:default")).to eq(0)
      second.signal("INT")
      expect(second.wait.exitstatus).to eq(0)
    end
  end

  describe "the HTTP endpoint (--http)" do
    def free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    def get(port, path)
      response = Net::HTTP.start("127.0.0.1", port, open_timeout: 2, read_timeout: 5) { |http| http.get(path) }
      [response.code.to_i, response.body]
    rescue SystemCallError, Net::OpenTimeout
      nil
    end

    # A stand-in OpenTelemetry collector on a free port: OTLP/HTTP JSON posts, each span to `spans`.
    def otlp_collector(spans)
      server = TCPServer.new("127.0.0.1", 0)
      Thread.new do
        loop do
          Thread.new(server.accept) do |client|
            while client.gets # the request line
              length = 0
              while (header = client.gets) && header != "\r\n"
                name, value = header.split(":", 2)
                length = value.to_i if name.casecmp?("content-length")
              end
              JSON.parse(client.read(length)).fetch("resourceSpans", []).each do |resource|
                resource["scopeSpans"].each { |scope| scope["spans"].each { |span| spans << span } }
              end
              client.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            end
          rescue IOError, SystemCallError
            nil
          end
        end
      rescue IOError, SystemCallError
        nil # closed
      end
      server
    end

    it "serves /metrics counting the app's Ruby jobs by class and outcome, and /livez and /readyz" do
      port = free_port
      3.times { |i| Rustq::Client.push("class" => "RecordJob", "args" => ["m#{i}"]) }
      Rustq::Client.push("class" => "KilledJob", "args" => ["kill"]) # dies at once (retry_in :kill)
      w = worker("-r", plain_app, "-c", "2", "--http", "127.0.0.1:#{port}")
      w.await("the jobs") { ledger.count { |e| e["job"] == "record" } == 3 && Sidekiq::DeadSet.new.size == 1 }
      metrics = w.await("the counters") do
        code, body = get(port, "/metrics")
        body if code == 200 && body.include?('rustq_jobs_dead_total{class="KilledJob",queue="default"} 1')
      end
      expect(metrics).to include('rustq_jobs_succeeded_total{class="RecordJob",queue="default"} 3',
        'rustq_jobs_executed_total{class="KilledJob",queue="default"} 1',
        'rustq_jobs_failed_total{class="KilledJob",queue="default"} 1',
        "rustq_concurrency 2", "rustq_redis_up 1")
      expect(get(port, "/livez")&.first).to eq(200)
      expect(w.await("ready") { get(port, "/readyz")&.first == 200 }).to be(true)
      w.signal("TSTP")
      expect(w.await("not ready once quiet") { get(port, "/readyz") if get(port, "/readyz")&.first == 503 }.last).to include("quiet")
      expect(w.stop.exitstatus).to eq(0)
    end

    it "continues a Ruby push's trace: the engine's consumer span is the push's child, and the job runs inside that span" do
      spans = Queue.new
      collector = otlp_collector(spans)
      trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
      push = <<~RUBY
        require "rustq"
        require "./spec/support/open_telemetry_stand_in"
        OpenTelemetry = OpenTelemetryStandIn
        OpenTelemetry::Context.with_current(OpenTelemetry::Context.new("traceparent" => "00-#{trace}-#{parent}-01")) do
          print Rustq::Client.push("class" => "TracedJob", "args" => [])
        end
      RUBY
      jid = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", "lib", "-e", push], chdir: RustqWorkerProcess::ROOT, &:read)
      expect(JSON.parse(redis.lindex("queue:default", 0))).to include("jid" => jid, "traceparent" => "00-#{trace}-#{parent}-01")

      w = worker("-r", plain_app, "--otlp-endpoint", "http://127.0.0.1:#{collector.addr[1]}", env: {"RUSTQ_SPEC_OPEN_TELEMETRY" => "1"})
      entry = w.await("the job") { ledger.find { |e| e["job"] == "traced" } }
      expect(w.stop.exitstatus).to eq(0) # flushes the spans
      found = []
      span = w.await("its span") do
        found << spans.pop until spans.empty?
        found.find { |s| s["attributes"].any? { |a| a["key"] == "messaging.message_id" && a["value"]["stringValue"] == jid } }
      end
      expect(span).to include("traceId" => trace, "parentSpanId" => parent, "name" => "default process")
      expect(entry["context"]).to eq("traceparent" => "00-#{trace}-#{span["spanId"]}-01")
    ensure
      collector&.close
    end

    it "exits 2 before booting the app when the port is taken, naming the address" do
      taken = TCPServer.new("127.0.0.1", 0)
      port = taken.addr[1]
      out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", "lib", RustqWorkerProcess::EXE, "-r", plain_app, "--http", port.to_s],
        chdir: RustqWorkerProcess::ROOT, err: [:child, :out], &:read)
      expect([$?.exitstatus, out]).to match([2, a_string_including("cannot listen on 127.0.0.1:#{port} (http)")])
    ensure
      taken&.close
    end
  end

  # Tagged: a Rails 6.1 app runs on Debian's ActiveJob 6.1, never with ActiveJob 7.2's copy on the
  # load path (bin/test-interop runs it under Sidekiq 8 without --activejob72).
  describe "a Rails 6.1 app (started in its root)", :rails_app do
    it "runs perform_later, set(wait:), retry_on, discard_on and Sidekiq::Job jobs inside the Rails executor" do
      jids = in_rails_app(<<~RUBY)
        now = GreetJob.perform_later("now")
        later = GreetJob.set(wait: 2.seconds).perform_later("later")
        flaky = FlakyJob.perform_later("flaky")
        doomed = DoomedJob.perform_later
        sidekiq = SidekiqStyleJob.perform_async("sidekiq client")
        puts JSON.generate(now: now.provider_job_id, later: later.provider_job_id, doomed: doomed.provider_job_id, sidekiq: sidekiq)
      RUBY
      expect(redis.zrange("schedule", 0, -1).map { |json| JSON.parse(json)["jid"] }).to eq([jids["later"]])

      w = worker(chdir: rails_root)
      w.await("every job") { ledger.size >= 7 }
      sleep 0.5 # nothing more may come: a job run twice would show up
      greets = ledger.select { |e| e["job"] == "greet" }.to_h { |e| [e["name"], e] }
      expect(greets.keys).to contain_exactly("now", "later")
      expect(greets["now"]).to include("jid" => jids["now"], "executor" => true)
      expect(greets["later"]["jid"]).to eq(jids["later"])
      expect(ledger.select { |e| e["job"] == "flaky" }.map { |e| e["execution"] }).to eq([1, 2, 3])
      expect(ledger).to include({"job" => "doomed", "discarded" => "no hope", "jid" => jids["doomed"]})
      expect(ledger).to include({"job" => "sidekiq", "name" => "sidekiq client", "jid" => jids["sidekiq"], "executor" => true})
      expect(ledger.size).to eq(7)
      expect(Sidekiq::RetrySet.new.size).to eq(0)
      expect(Sidekiq::DeadSet.new.size).to eq(0)
      expect(w.log).to include("greeting now") # Rails.logger
      # Sidekiq's server middleware (config/application.rb) saw every run: ActiveJob jobs through
      # Sidekiq's wrapper class, as under Sidekiq.
      middleware = redis.lrange("middleware", 0, -1).map { |json| JSON.parse(json) }
      expect(middleware.size).to eq(7)
      # (Sidekiq 8 has no ActiveJob wrapper for Rails 6.1, so there the middleware gets an Object.)
      wrapper = Sidekiq::VERSION >= "8" ? "Object" : "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
      expect(middleware).to include({"instance" => wrapper, "jid" => jids["now"], "provider_job_id" => nil})
      expect(middleware).to include({"instance" => "SidekiqStyleJob", "jid" => jids["sidekiq"]})

      expect(w.stop.exitstatus).to eq(0)
    end

    it "puts failed Sidekiq::Job jobs in Sidekiq's RetrySet with sidekiq_retry_in's delay, and calls sidekiq_retries_exhausted" do
      # Sidekiq's client applies a class's sidekiq_options only when given the class itself.
      retried = Sidekiq::Client.push("class" => "FailingSidekiqJob", "args" => ["fly"], "retry" => 2)
      exhausted = Sidekiq::Client.push("class" => "FailingSidekiqJob", "args" => ["land"], "retry" => 2,
        "retry_count" => 1, "failed_at" => Time.now.to_f)
      w = worker(chdir: rails_root)
      w.await("a retry and a dead job") { Sidekiq::RetrySet.new.size == 1 && Sidekiq::DeadSet.new.size == 1 }

      retry_entry = Sidekiq::RetrySet.new.first
      expect(retry_entry.jid).to eq(retried)
      expect(retry_entry.item).to include("error_class" => "ArgumentError", "error_message" => "cannot fly", "retry_count" => 0, "queue" => "default")
      # sidekiq_retry_in answered 1000 s for the first retry; Sidekiq adds up to 9 s of jitter.
      expect(retry_entry.at.to_f - retry_entry["failed_at"]).to be_between(1000, 1010)

      dead_entry = Sidekiq::DeadSet.new.first
      expect(dead_entry.jid).to eq(exhausted)
      expect(dead_entry.item).to include("retry_count" => 2, "error_message" => "cannot land")
      expect(ledger).to eq([{"job" => "failing", "exhausted" => exhausted, "error" => "cannot land"}])
      expect(w.stop.exitstatus).to eq(0)
    end

    # Without server middleware the worker hands Ruby only the ActiveJob data and makes the whole
    # payload for the failure (Processor#process_active_job, Native::Running#payload).
    [true, false].each do |middleware|
      it "calls an ActiveJob class's sidekiq_retry_in and sidekiq_retries_exhausted, as Sidekiq 7.1.3+ does (#{middleware ? "with" : "without"} server middleware)" do
        retried, payload = in_rails_app(<<~RUBY)
          job = HookedJob.perform_later("fly")
          puts JSON.generate([job.provider_job_id, HookedJob.new("land").serialize])
        RUBY
        # The class's sidekiq_options reached the payload through the adapter.
        expect(queue_payloads("default").first).to include("jid" => retried, "retry" => 2, "wrapped" => "HookedJob")
        exhausted = Sidekiq::Client.push("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "HookedJob",
          "args" => [payload], "retry" => 2, "retry_count" => 1, "failed_at" => Time.now.to_f)
        w = worker(chdir: rails_root, env: middleware ? {} : {"RUSTQ_SPEC_NO_MIDDLEWARE" => "1"})
        w.await("a retry and a dead job") { Sidekiq::RetrySet.new.size == 1 && Sidekiq::DeadSet.new.size == 1 }

        retry_entry = Sidekiq::RetrySet.new.first
        expect(retry_entry.jid).to eq(retried)
        # sidekiq_retry_in answered 2000 s for the first retry; Sidekiq adds up to 9 s of jitter.
        expect(retry_entry.at.to_f - retry_entry["failed_at"]).to be_between(2000, 2010)
        expect(Sidekiq::DeadSet.new.first.jid).to eq(exhausted)
        expect(ledger).to eq([{"job" => "hooked", "exhausted" => exhausted, "error" => "cannot land"}])
        expect(w.stop.exitstatus).to eq(0)
      end
    end

    # Sidekiq 7.3+ names ActiveJob payloads Sidekiq::ActiveJob::Wrapper; Rails' adapter, JobWrapper.
    [true, false].each do |middleware|
      it "runs ActiveJob payloads under Sidekiq 7.3+'s wrapper name, Sidekiq::ActiveJob::Wrapper (#{middleware ? "with" : "without"} server middleware)" do
        data = in_rails_app('puts JSON.generate(GreetJob.new("from sidekiq 7.3").serialize)')
        jid = Sidekiq::Client.push("class" => "Sidekiq::ActiveJob::Wrapper", "wrapped" => "GreetJob", "queue" => "default", "args" => [data])
        w = worker(chdir: rails_root, env: middleware ? {} : {"RUSTQ_SPEC_NO_MIDDLEWARE" => "1"})
        w.await("the job") { ledger.any? }

        expect(ledger).to eq([{"job" => "greet", "name" => "from sidekiq 7.3", "jid" => jid, "executor" => true}])
        expect(w.stop.exitstatus).to eq(0)
      end
    end

    it "gives each job's ActiveRecord connection back to the pool (the Rails executor), as Sidekiq does" do
      5.times { Sidekiq::Client.push("class" => "DatabaseJob", "args" => [0.3]) }
      w = worker("-c", "5", chdir: rails_root)
      w.await("the database jobs") { ledger.size == 5 }
      Sidekiq::Client.push("class" => "PoolReportJob", "args" => [])
      w.await("the pool report") { ledger.size == 6 }

      # The jobs ran side by side, on threads that stay; each thread's connection went back to
      # the pool when its job ended, so the report's own is the only one out.
      expect(ledger.first(5).map { |e| e["thread"] }.uniq.size).to be > 1
      expect(ledger.last).to eq("job" => "pool", "busy" => 1)
      expect(w.stop.exitstatus).to eq(0)
    end

    it "reloads a job class changed on disk before its next job in development, as Sidekiq does" do
      Dir.mktmpdir do |dir|
        root = File.join(dir, "app")
        FileUtils.cp_r(rails_root, root)
        job_file = File.join(root, "app", "jobs", "versioned_job.rb")
        FileUtils.mkdir_p(File.dirname(job_file))
        write_job = lambda do |version|
          File.write(job_file, <<~RUBY)
            class VersionedJob
              include Rustq::Job

              def perform
                Ledger.add("job" => "versioned", "version" => #{version})
              end
            end
          RUBY
        end
        write_job.call(1)
        w = worker(chdir: root)
        Sidekiq::Client.push("class" => "VersionedJob", "args" => [])
        w.await("version 1 of the job") { ledger.size == 1 }
        sleep 1 # a later modification time than anything seen at boot (1 s resolution suffices)
        write_job.call(2)
        Sidekiq::Client.push("class" => "VersionedJob", "args" => [])
        w.await("the job's second run") { ledger.size == 2 }

        expect(ledger.map { |e| e["version"] }).to eq([1, 2])
        expect(w.stop.exitstatus).to eq(0)
      end
    end

    it "eager-loads the app's code in production and not in development, as the app's config says" do
      %w[production development].each do |env|
        w = worker(chdir: rails_root, env: {"RAILS_ENV" => env})
        Sidekiq::Client.push("class" => "BootReportJob", "args" => [])
        w.await("the boot report in #{env}") { ledger.any? { |e| e["env"] == env } }
        expect(w.stop.exitstatus).to eq(0)
      end
      expect(ledger.map { |e| [e["env"], e["eager_loaded"]] }).to eq([["production", true], ["development", false]])
    end

    it "stops gracefully on TERM: a job still running after the timeout goes back to its queue, exit 0" do
      jid = in_rails_app('puts JSON.generate(SlowJob.perform_later("slow", 60).provider_job_id)')
      w = worker("-t", "1", chdir: rails_root)
      w.await("the slow job to start") { ledger.any? }
      w.await("the process in Sidekiq::ProcessSet, busy with the job") { processes.first&.[]("busy") == 1 }

      expect(w.stop.exitstatus).to eq(0)
      expect(ledger).to eq([{"job" => "slow", "name" => "slow", "event" => "started", "jid" => jid}])
      expect(queue_payloads("default").map { |job| job["jid"] }).to eq([jid])
      expect(processes).to be_empty
    end
  end

  # Fault cases for the Ruby host, counted with the ledger like the Rust fault suite
  # (tests/tests/faults.rs); each prints its summary line.
  describe "faults" do
    def report(name, pushed, ran_jids, note)
      unique = ran_jids.uniq
      lost = (pushed - unique).size
      puts "\nfault case #{name}: pushed #{pushed.size}, ran #{ran_jids.size}, lost #{lost}, duplicated #{ran_jids.size - unique.size} (#{note})"
      lost
    end

    it "loses none of 10,000 jobs when the worker is SIGKILLed mid-run" do
      jids = Rustq::Client.push_bulk("class" => "RecordJob", "args" => Array.new(10_000) { |i| ["bulk-#{i}"] })
      first = worker("-r", plain_app, "-c", "5", "-l", "warn")
      first.await("1,000 jobs to run") { redis.llen("ledger") >= 1_000 }
      first.signal("KILL")
      first.wait
      in_flight = redis.keys("rustq:inprogress:*").sum { |key| redis.llen(key) }
      second = worker("-r", plain_app, "-c", "5", "-l", "warn")
      second.await("every job", timeout: 180) { (jids - ledger.map { |e| e["jid"] }).empty? }
      ran = ledger.map { |e| e["jid"] }.select { |jid| jids.include?(jid) }
      expect(report("sigkill-ruby-host", jids, ran, "#{in_flight} in flight at the kill")).to eq(0)
      expect(ran.size - ran.uniq.size).to be <= in_flight
      expect(second.stop.exitstatus).to eq(0)
    end

    it "buries a job that SIGKILLs its own process on its 4th death, and runs the rest" do
      suicide = Rustq::Client.push("class" => "SuicideJob", "args" => [])
      jids = Rustq::Client.push_bulk("class" => "RecordJob", "args" => Array.new(20) { |i| ["innocent-#{i}"] })
      deaths = 0
      # Recovery puts the dead process's jobs back oldest-first, so the job that was running is
      # fetched first again and every death counts: buried on death max_recoveries + 1 = 4.
      8.times do
        w = worker("-r", plain_app, "-c", "1")
        status = begin
          w.wait(timeout: 15)
        rescue RuntimeError
          nil # still running: the job is buried
        end
        break unless status && !status.success?

        deaths += 1
      end
      survivor = worker("-r", plain_app, "-c", "2")
      survivor.await("the dead set entry") { Sidekiq::DeadSet.new.size == 1 }
      survivor.await("every innocent job") { (jids - ledger.map { |e| e["jid"] }).empty? }
      dead = Sidekiq::DeadSet.new.first
      expect(dead.jid).to eq(suicide)
      expect(dead["error_class"]).to eq("Rustq::ProcessDied")
      expect(deaths).to eq(4)
      ran = ledger.map { |e| e["jid"] }.select { |jid| jids.include?(jid) }
      expect(report("self-killing-ruby-job", jids, ran, "the job killed #{deaths} worker processes, then went to the dead set")).to eq(0)
    end
  end
end
