# frozen_string_literal: true

# The native bridge: threads, the GVL, interrupts, fork and errors, against the real server.
RSpec.describe "rustq's native bridge" do
  let(:native) { Rustq.const_get(:Native) }

  it "serves many threads at once through one client" do
    threads = Array.new(16) do |t|
      Thread.new { Array.new(50) { |i| Rustq::Client.push("class" => "A", "args" => [t, i]) } }
    end
    jids = threads.flat_map(&:value)

    expect(jids.uniq.size).to eq(800)
    expect(redis.llen("queue:default")).to eq(800)
    expect(queue_payloads.map { |p| p["args"] }).to match_array((0...16).to_a.product((0...50).to_a))
  end

  it "releases the GVL while Redis works" do
    Rustq::Client.push("class" => "A", "args" => []) # connect first
    redis.call("CLIENT", "PAUSE", "600", "WRITE")
    ticks = 0
    ticker = Thread.new { loop { ticks += 1 } }
    started = Time.now
    Rustq::Client.push("class" => "A", "args" => [])
    waited = Time.now - started
    ticker.kill

    expect(waited).to be >= 0.4
    # With the GVL held for the whole push, the ticker could not have run at all meanwhile.
    expect(ticks).to be > 1_000
  end

  # A spin is bounded: a push whose reply is late spins for spin_wait, then sleeps.
  context "with spin_wait at its most" do
    include_context "restores Rustq.config"

    it "sleeps, not spins, once spin_wait has passed without a reply" do
      Rustq.configure { |c| c.spin_wait = 0.001 }
      # One thread alone pushing (threads pushing side by side do not spin at all).
      cpu, waited = Thread.new do
        Rustq::Client.push("class" => "A", "args" => []) # connect first
        redis.call("CLIENT", "PAUSE", "600", "WRITE")
        cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        Rustq::Client.push("class" => "A", "args" => [])
        [Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - cpu, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started]
      end.value

      expect(waited).to be >= 0.4
      # Spinning through the pause would have used about as much CPU as it lasted.
      expect(cpu).to be < 0.1
    ensure
      redis.call("CLIENT", "UNPAUSE")
    end
  end

  it "lets Thread#raise interrupt a push that waits on Redis" do
    Rustq::Client.push("class" => "A", "args" => [])
    redis.call("CLIENT", "PAUSE", "3000", "WRITE")
    pusher = Thread.new { Rustq::Client.push("class" => "A", "args" => []) }
    pusher.report_on_exception = false
    sleep 0.2
    started = Time.now
    pusher.raise(RuntimeError, "stop waiting")

    expect { pusher.join }.to raise_error(RuntimeError, "stop waiting")
    expect(Time.now - started).to be < 1
  ensure
    redis.call("CLIENT", "UNPAUSE")
  end

  # A single-threaded program: Ruby calls the unblock function from its signal handler, so the
  # trap runs (and raises) as soon as the signal comes, not when Redis answers.
  it "lets a signal's trap interrupt a push that the main thread of a script waits on" do
    script = <<~RUBY
      require "rustq"
      require "redis"
      Rustq::Client.push("class" => "A", "args" => [])
      Redis.new(url: ENV.fetch("REDIS_URL")).call("CLIENT", "PAUSE", "4000", "WRITE")
      trap("USR1") { raise Interrupt, "usr1" }
      # No Ruby thread (Process.detach would start one): the script stays single-threaded.
      killer = Process.spawn("sleep 0.3 && kill -USR1 \#{Process.pid}")
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      begin
        Rustq::Client.push("class" => "A", "args" => [])
        puts "pushed"
      rescue Interrupt => e
        puts "\#{e.message} after \#{(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(2)}"
      end
      Process.wait(killer)
    RUBY
    out = IO.popen([RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script], err: [:child, :out], &:read)

    expect(out).to match(/\Ausr1 after (\d+\.\d+)\n\z/)
    expect(out[/after (\S+)/, 1].to_f).to be < 1.5
  ensure
    redis.call("CLIENT", "UNPAUSE")
  end

  it "builds a new runtime and client in a forked child, and the parent keeps working" do
    Rustq::Client.push("class" => "A", "args" => ["parent before"])
    parent_pid = native.runtime_pid
    expect(parent_pid).to eq(Process.pid)

    reader, writer = IO.pipe
    child = fork do
      reader.close
      jid = Rustq::Client.push("class" => "A", "args" => ["child"])
      writer.write(JSON.generate([native.runtime_pid, jid]))
      writer.close
      exit!(0)
    end
    writer.close
    _, status = Process.wait2(child)
    runtime_pid, child_jid = JSON.parse(reader.read)

    expect(status).to be_success
    expect(runtime_pid).to eq(child)
    Rustq::Client.push("class" => "A", "args" => ["parent after"])
    expect(native.runtime_pid).to eq(Process.pid)
    expect(queue_payloads.map { |p| p["args"] }).to eq([["parent before"], ["child"], ["parent after"]])
    expect(queue_payloads[1]["jid"]).to eq(child_jid)
  end

  it "forks while other threads push and bulk-push, and every child pushes at once" do
    stop = false
    pushers = Array.new(3) do |t|
      Thread.new { Rustq::Client.push("class" => "A", "args" => [t]) until stop }
    end
    pushers << Thread.new do
      Rustq::Client.push_bulk("class" => "B", "args" => Array.new(20_000) { |i| [i, "x" * 20] }) until stop
    end
    sleep 0.2
    children = Array.new(8) do |n|
      sleep 0.05
      fork do
        Rustq::Client.push("class" => "Child", "args" => [n])
        Rustq::Client.push_bulk("class" => "ChildBulk", "args" => [[n], [n]])
        exit!(0)
      end
    end
    deadline = Time.now + 20
    statuses = children.map do |pid|
      loop do
        _, status = Process.waitpid2(pid, Process::WNOHANG)
        break status if status
        if Time.now > deadline
          Process.kill("KILL", pid)
          break nil
        end
        sleep 0.01
      end
    end
    stop = true
    pushers.each(&:join)

    expect(statuses).to all(be_success), "a forked child hung or failed: #{statuses.inspect}"
    children_args = queue_payloads.select { |p| p["class"] == "Child" }.map { |p| p["args"] }
    expect(children_args).to match_array((0...8).map { |n| [n] })
    expect(queue_payloads.count { |p| p["class"] == "ChildBulk" }).to eq(16)
  end

  context "errors" do
    around do |example|
      example.run
    ensure
      Rustq.config.redis_url = nil
      Rustq.config.connect_timeout = 1.0
      Rustq.configure
    end

    it "raises Rustq::ConnectionError naming the URL (password redacted) when Redis is unreachable" do
      port = RedisServer.free_port
      Rustq.configure do |config|
        config.redis_url = "redis://app:s3cret@127.0.0.1:#{port}/0"
        config.connect_timeout = 0.5
      end

      expect { Rustq::Client.push("class" => "A", "args" => []) }.to raise_error(Rustq::ConnectionError) { |e|
        expect(e.message).to include("redis://app:REDACTED@127.0.0.1:#{port}/0")
        expect(e.message).not_to include("s3cret")
        expect(e).to be_a(Rustq::Error)
      }
    end

    it "raises Rustq::CommandError when Redis refuses a command" do
      redis.set("queues", "not a set")
      expect { Rustq::Client.push("class" => "A", "args" => []) }.to raise_error(Rustq::CommandError, /WRONGTYPE/)
    end

    it "recovers when Redis comes back" do
      Rustq::Client.push("class" => "A", "args" => [])
      redis.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
      expect(Rustq::Client.push("class" => "A", "args" => [2])).to match(/\A\h{24}\z/)
    end
  end
end
