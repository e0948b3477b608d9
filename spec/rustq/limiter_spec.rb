# frozen_string_literal: true

require_relative "../support/rustq_worker_process"

# Rustq::Limiter (Sidekiq Enterprise's shape) on a real Redis, and what rustq-worker does with a
# Rustq::OverLimit a job raises.
RSpec.describe Rustq::Limiter do
  let(:workers) { [] }

  after { workers.each(&:kill) }

  def worker(*args)
    RustqWorkerProcess.new(*args).start.tap { |w| workers << w }
  end

  it "lets `limit` blocks at once hold a concurrent limiter's slots, gives each back, and raises OverLimit after wait_timeout" do
    limiter = described_class.concurrent("erp", 2, wait_timeout: 0.2)
    inside = Queue.new
    release = Queue.new
    holders = Array.new(2) { Thread.new { limiter.within_limit { inside << 1; release.pop } } }
    2.times { inside.pop }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    expect { limiter.within_limit { :never } }.to raise_error(Rustq::OverLimit, /"erp" is over its limit \(2 at once\)/)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 0.2
    2.times { release << 1 }
    holders.each(&:join)
    expect(limiter.within_limit { :ran }).to eq(:ran)
    expect(redis.hlen("rustq:limiter:{erp}:running")).to eq(0)
  end

  it "frees a slot taken outside a worker after lock_timeout, as nothing watches that process" do
    limiter = described_class.concurrent("console", 1, wait_timeout: 0, lock_timeout: 0.3)
    holder = Thread.new { limiter.within_limit { sleep 5 } }
    sleep 0.1 until redis.hlen("rustq:limiter:{console}:running") == 1
    expect { limiter.within_limit { :never } }.to raise_error(Rustq::OverLimit)
    sleep 0.4
    expect(limiter.within_limit { :ran }).to eq(:ran)
  ensure
    holder&.kill&.join
  end

  it "counts a bucket per clock interval and a window over any interval, saying when there will be room" do
    bucket = described_class.bucket("stripe", 2, :minute, wait_timeout: 0)
    2.times { bucket.within_limit { nil } }
    expect { bucket.within_limit { nil } }.to raise_error(Rustq::OverLimit) { |e| expect(e.retry_in).to be_between(0, 60) }

    window = described_class.window("mail", 2, 1, wait_timeout: 0)
    2.times { window.within_limit { nil } }
    expect { window.within_limit { nil } }.to raise_error(Rustq::OverLimit) { |e| expect(e.retry_in).to be_between(0, 1) }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    # With time to wait, it waits for the oldest to leave the window.
    described_class.window("mail", 2, 1, wait_timeout: 2).within_limit { nil }
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be_between(0.5, 2)
  end

  it "refuses a limit below 1, a blank name and an unknown interval" do
    expect { described_class.concurrent("x", 0) }.to raise_error(ArgumentError, /limit must be an Integer of at least 1, got 0/)
    expect { described_class.bucket("", 1, :second) }.to raise_error(ArgumentError, /name must be a non-empty String/)
    expect { described_class.window("x", 1, :fortnight) }.to raise_error(ArgumentError, /interval must be :second, :minute, :hour, :day/)
  end

  it "in rustq-worker, schedules a job over its limiter's limit again instead of failing it" do
    %w[first second].each { |n| Rustq::Client.push("class" => "OncePerMinuteJob", "args" => [n]) }
    w = worker("-r", "./spec/fixtures/worker_limits_app.rb", "-c", "2")
    scheduled_again = w.await("the job over the limit, scheduled") { (s = scheduled).size == 1 && s }
    job, at = scheduled_again.first
    expect(job["overrated"]).to eq(1)
    expect(at).to be_between(Time.now.to_f, Time.now.to_f + 61)
    expect(redis.lrange("ledger", 0, -1).size).to eq(1)
    expect(redis.zcard("retry")).to eq(0)
    expect(redis.get("stat:failed").to_i).to eq(0)
    expect(w.stop.exitstatus).to eq(0)
  end

  it "in rustq-worker, frees a concurrent limiter's slot when the process holding it dies, not by time" do
    Rustq::Client.push("class" => "HoldSlotJob", "args" => [])
    doomed = worker("-r", "./spec/fixtures/worker_limits_app.rb", "-c", "2")
    doomed.await("the slot taken") { redis.hlen("rustq:limiter:{erp}:running") == 1 }
    Rustq::Client.push("class" => "WantSlotJob", "args" => [])
    doomed.await("WantSlotJob over the limit") { scheduled.size == 1 }
    doomed.signal("KILL")
    Process.wait(doomed.pid)
    sleep 2.5
    expect(redis.hlen("rustq:limiter:{erp}:running")).to eq(1) # held while nobody knows it died
    watcher = worker("-r", "./spec/fixtures/worker_limits_app.rb", "-c", "2", "-q", "other")
    watcher.await("the dead process's slot freed") { redis.hlen("rustq:limiter:{erp}:running").zero? }
  end
end
