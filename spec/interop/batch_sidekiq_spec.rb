# frozen_string_literal: true

require "sidekiq"
require_relative "../support/rustq_worker_process"
require_relative "../fixtures/sidekiq_batch_app"

# Batches in a mixed fleet: a real Sidekiq process (6.4.1, or 7.3/8.1 under bin/test-interop) with
# the gem's batch middleware runs a batch's jobs — Sidekiq::Job classes, pushed with their own
# perform_async inside Rustq::Batch#jobs — alone or next to rustq-worker, and counts them as
# rustq-worker does: each callback once, counts exact.
RSpec.describe "Batches run by Sidekiq #{Sidekiq::VERSION} with Rustq::Batch::SidekiqMiddleware" do
  let(:processes) { [] }

  after { processes.each { |p| p.respond_to?(:kill) ? p.kill : p.stop } }

  def ledger = redis.lrange("ledger", 0, -1).map { |json| JSON.parse(json) }

  def events(bid) = ledger.select { |e| e["event"] && e["bid"] == bid }.map { |e| e["event"] }

  # Batch "good": rows, `fail_once` of them failing once; batch "doomed": rows, one dying.
  def push_batches(rows:, fail_once:)
    good = Rustq::Batch.new
    good.on(:complete, MixedDone)
    good.on(:success, MixedDone, "batch" => "good")
    good.on(:death, MixedDone)
    good_jids = good.jobs do
      rows.times { |n| MixedRowJob.perform_async(n, n < fail_once ? "fail_once" : "ok") }
    end
    doomed = Rustq::Batch.new
    %i[complete success death].each { |event| doomed.on(event, MixedDone) }
    doomed.jobs do
      MixedRowJob.set(retry: 0).perform_async(-1, "die")
      (rows / 2).times { |n| MixedRowJob.perform_async(n, "ok") }
    end
    [good, good_jids, doomed]
  end

  def await(what, timeout: 60)
    deadline = Time.now + timeout
    until yield
      if Time.now > deadline
        logs = processes.map(&:log).map { |log| log.respond_to?(:path) ? File.read(log.path) : log }
        raise "timed out waiting for #{what}; ledger events: #{ledger.select { |e| e["event"] }}\n#{logs.join("\n---\n")}"
      end
      sleep 0.1
    end
  end

  def expect_counted(good, doomed, rows:, fail_once:)
    await("the batches' callbacks") do
      events(good.bid).sort == %w[complete success] && events(doomed.bid).sort == %w[complete death]
    end
    sleep 1.5 # a callback fired twice would show by now
    expect(events(good.bid).sort).to eq(%w[complete success])
    expect(events(doomed.bid).sort).to eq(%w[complete death])
    success = ledger.find { |e| e["event"] == "success" && e["bid"] == good.bid }
    expect(success).to include("pending" => 0, "failures" => 0, "options" => {"batch" => "good"})
    status = good.status
    expect([status.total, status.pending, status.failures, status.complete?, status.success?]).to eq([rows, 0, 0, true, true])
    status = doomed.status
    expect([status.total, status.pending, status.failures, status.dead_jids.size, status.success?]).to eq([rows / 2 + 1, 0, 1, 1, false])
    expect(ledger.count { |e| e["mode"] == "fail_once" }).to eq(2 * fail_once) # failed once, then succeeded
  end

  it "counts a batch's jobs that Sidekiq runs, its pushes joining the batch: success after retries, death once" do
    rows, fail_once = 60, 3
    good, good_jids, doomed = push_batches(rows: rows, fail_once: fail_once)
    expect(good_jids.size).to eq(rows)
    expect(good_jids).to all(match(/\A\h{24}\z/))
    expect(redis.llen("queue:default")).to eq(rows + rows / 2 + 1)
    expect(queue_payloads.map { |p| p["bid"] }.uniq).to contain_exactly(good.bid, doomed.bid)

    processes << SidekiqProcess.new("./spec/fixtures/sidekiq_batch_app.rb").start
    expect_counted(good, doomed, rows: rows, fail_once: fail_once)
    expect(ledger.map { |e| e["by"] }.uniq).to eq(["sidekiq"])
    expect(ledger.select { |e| e["row"] && e["mode"] == "ok" }.map { |e| e["jid"] }).to include(*good_jids.last(rows - fail_once))
    expect(redis.zcard("dead")).to eq(1)
  end

  it "counts them the same with Sidekiq and rustq-worker working the same queue" do
    processes << SidekiqProcess.new("./spec/fixtures/sidekiq_batch_app.rb").start
    processes << RustqWorkerProcess.new("-r", "./spec/fixtures/sidekiq_batch_app.rb", "-c", "3").start
    await("both processes' heartbeats") { redis.scard("processes") == 2 }
    rows, fail_once = 300, 6
    good, _, doomed = push_batches(rows: rows, fail_once: fail_once)
    expect_counted(good, doomed, rows: rows, fail_once: fail_once)
    expect(ledger.map { |e| e["by"] }.uniq).to contain_exactly("sidekiq", "rustq")
  end
end
