# frozen_string_literal: true

require_relative "../support/rustq_worker_process"

# Rustq::Batch, Sidekiq Pro's API, on a real Redis; run by rustq-worker's Ruby host.
RSpec.describe Rustq::Batch do
  let(:workers) { [] }

  after { workers.each(&:kill) }

  before do
    stub_const("PlainJob", Class.new { include Rustq::Job; def perform(*) = nil }) # rubocop:disable Style/Semicolon
  end

  def ledger = redis.lrange("ledger", 0, -1).map { |json| JSON.parse(json) }

  it "makes no job visible until the jobs block ends, then every job with its bid, bulk pushes and ActiveJob included" do
    stub_const("AjJob", Class.new(ActiveJob::Base) { self.queue_adapter = :rustq; def perform(*) = nil }) # rubocop:disable Style/Semicolon
    batch = described_class.new
    batch.description = "Import"
    batch.on(:success, "ImportDone#done", "file" => "a.csv")
    jids = batch.jobs do
      PlainJob.perform_async(1)
      Rustq::Client.push_bulk("class" => PlainJob, "args" => [[2], [3]])
      PlainJob.perform_in(600, 4)
      AjJob.perform_later(5)
      expect(redis.llen("queue:default")).to eq(0)
      expect(redis.zcard("schedule")).to eq(0)
      expect(Rustq::Batch::Status.new(batch.bid).total).to eq(0) # written, held open, no job yet
    end
    expect(jids.size).to eq(5)
    expect(queue_payloads.map { |p| p["bid"] }.uniq).to eq([batch.bid])
    expect(queue_payloads.size).to eq(4)
    expect(scheduled.first.first["bid"]).to eq(batch.bid)
    status = Rustq::Batch::Status.new(batch.bid)
    expect([status.total, status.pending, status.failures]).to eq([5, 5, 0])
    expect(status.description).to eq("Import")
    expect(status.complete?).to be(false)
    expect(status.jids).to match_array(jids)
    expect(Rustq::BatchSet.new.map(&:bid)).to eq([batch.bid])
  end

  it "makes a batch made inside another's jobs block its child, pending in the parent until it completes" do
    parent = described_class.new
    child = nil
    parent.jobs do
      PlainJob.perform_async(1)
      child = described_class.new
      child.jobs { 2.times { |n| PlainJob.perform_async(n) } }
    end
    expect(child.status.parent_bid).to eq(parent.bid)
    expect([parent.status.total, parent.status.pending]).to eq([1, 2]) # its job, and the child
    expect([child.status.total, child.status.pending]).to eq([2, 2])
  end

  it "completes a batch whose jobs block pushed nothing, enqueuing its complete and success callbacks once" do
    batch = described_class.new
    batch.on(:complete, "ImportDone#finished")
    batch.on(:success, "ImportDone", "file" => "none.csv")
    expect(batch.jobs {}).to eq([])
    status = batch.status
    expect([status.total, status.pending, status.complete?, status.success?]).to eq([0, 0, true, true])
    callbacks = queue_payloads.map { |p| [p["class"], p["args"]] }
    expect(callbacks).to contain_exactly(
      ["Rustq::Batch::Callback", ["complete", batch.bid, "ImportDone#finished", {}]],
      ["Rustq::Batch::Callback", ["success", batch.bid, "ImportDone", {"file" => "none.csv"}]]
    )
    expect { batch.jobs { PlainJob.perform_async(1) } }.to raise_error(Rustq::Batch::Immutable)
  end

  it "refuses an unknown event, options that are not a Hash, an unknown bid" do
    batch = described_class.new
    expect { batch.on(:finished, "X") }.to raise_error(ArgumentError, /unknown batch event :finished/)
    expect { batch.on(:success, "X", "nope") }.to raise_error(ArgumentError, /options must be a Hash, got String/)
    expect { described_class.new("no-such-bid") }.to raise_error(Rustq::Batch::NoSuchBatch, /no batch no-such-bid/)
    expect(redis.keys("*")).to be_empty
  end

  it "runs in rustq-worker: the callbacks once, jobs added from inside a batch job counted, then no more jobs" do
    batch = described_class.new
    batch.on(:success, "ImportDone", "file" => "a.csv")
    batch.on(:complete, "ImportDone#finished")
    batch.jobs { 10.times { |n| Rustq::Client.push("class" => "RowJob", "args" => [n]) } }
    w = RustqWorkerProcess.new("-r", "./spec/fixtures/worker_batch_app.rb", "-c", "4").start.tap { |p| workers << p }
    w.await("both callbacks") { ledger.count { |e| e["event"] } == 2 }
    sleep 1
    events = ledger.select { |e| e["event"] }
    expect(events.map { |e| e["event"] }).to contain_exactly("success", "complete")
    success = events.find { |e| e["event"] == "success" }
    expect(success).to include("bid" => batch.bid, "total" => 11, "pending" => 0, "options" => {"file" => "a.csv"})
    expect(ledger.select { |e| e["row"] }.map { |e| e["bid"] }.uniq).to eq([batch.bid])
    status = batch.status
    expect([status.total, status.pending, status.failures, status.complete?, status.success?]).to eq([11, 0, 0, true, true])
    expect { batch.jobs { PlainJob.perform_async(1) } }.to raise_error(Rustq::Batch::Immutable, /is complete/)
    expect(batch.status.total).to eq(11)
    expect(w.stop.exitstatus).to eq(0)
  end
end
