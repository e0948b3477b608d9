# frozen_string_literal: true

require "rustq/testing"

RSpec.describe Rustq::Testing do
  # Requiring rustq/testing turns fake mode on (as Sidekiq's does); the rest of the suite pushes
  # to Redis, so every example here states its mode and the suite goes back to disable!.
  around do |example|
    Rustq::Job.clear_all
    example.run
  ensure
    Rustq::Job.clear_all
    described_class.disable!
  end

  before do
    stub_const("FakeJob", Class.new {
      include Rustq::Job
      class << self; attr_accessor :performed; end
      self.performed = []
      def perform(*args) = self.class.performed << [jid, args]
    })
    stub_const("ChainJob", Class.new {
      include Rustq::Job
      rustq_options queue: "chain"
      def perform(n) = n.positive? && ChainJob.perform_async(n - 1)
    })
  end

  describe "fake!" do
    before { described_class.fake! }

    it "collects jobs in memory, normalised as a real push would, and writes nothing" do
      jid = FakeJob.perform_async(1, "two")
      FakeJob.perform_in(60, "later")

      expect(FakeJob.jobs.size).to eq(2)
      expect(FakeJob.jobs[0]).to include("jid" => jid, "class" => "FakeJob", "args" => [1, "two"], "queue" => "default", "retry" => true)
      expect(FakeJob.jobs[0]).to have_key("enqueued_at")
      expect(FakeJob.jobs[1]["at"]).to be_within(5).of(Time.now.to_f + 60)
      expect(Rustq::Testing::Queues["default"].size).to eq(2)
      expect(redis.dbsize).to eq(0)
    end

    it "drain runs the jobs, including the ones they push" do
      FakeJob.perform_bulk([[1], [2]])
      ChainJob.perform_async(3)

      FakeJob.drain
      expect(FakeJob.performed.map(&:last)).to eq([[1], [2]])
      expect(FakeJob.jobs).to be_empty

      ChainJob.drain
      expect(ChainJob.jobs).to be_empty
      expect(redis.dbsize).to eq(0)
    end

    it "perform_one runs one job and complains when there is none" do
      FakeJob.perform_async(1)
      FakeJob.perform_one
      expect(FakeJob.performed.size).to eq(1)
      expect { FakeJob.perform_one }.to raise_error(Rustq::Testing::EmptyQueueError)
    end

    it "clear and Rustq::Job.clear_all forget jobs; jobs lists every class's" do
      FakeJob.perform_async(1)
      ChainJob.perform_async(0)
      expect(Rustq::Job.jobs.size).to eq(2)

      FakeJob.clear
      expect(FakeJob.jobs).to be_empty
      expect(ChainJob.jobs.size).to eq(1)
      Rustq::Job.clear_all
      expect(Rustq::Job.jobs).to be_empty
    end

    it "still refuses bad pushes" do
      expect { FakeJob.perform_async(:sym) }.to raise_error(Rustq::InvalidJob)
      expect(FakeJob.jobs).to be_empty
    end

    it "drain_all runs ActiveJob payloads too" do
      stub_const("FakeActiveJob", Class.new(ActiveJob::Base) {
        self.queue_adapter = :rustq
        class << self; attr_accessor :ran; end
        def perform(value) = self.class.ran = [value, provider_job_id]
      })
      job = FakeActiveJob.perform_later("hello")

      expect(Rustq::Job.jobs.first).to include("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "FakeActiveJob")
      Rustq::Job.drain_all
      expect(FakeActiveJob.ran).to eq(["hello", job.provider_job_id])
    end
  end

  describe "inline!" do
    it "runs jobs at once, without Redis" do
      described_class.inline! do
        FakeJob.perform_async(1, {"a" => [2]})
        FakeJob.perform_bulk([[3]])
      end

      expect(FakeJob.performed.map(&:last)).to eq([[1, {"a" => [2]}], [3]])
      expect(FakeJob.performed.first.first).to match(/\A\h{24}\z/)
      expect(redis.dbsize).to eq(0)
    end
  end

  describe "disable!" do
    it "pushes to Redis again, and a block restores the mode it found" do
      described_class.fake!
      described_class.disable! { FakeJob.perform_async(1) }

      expect(described_class).to be_fake
      expect(redis.llen("queue:default")).to eq(1)
      expect(FakeJob.jobs).to be_empty
    end
  end
end
