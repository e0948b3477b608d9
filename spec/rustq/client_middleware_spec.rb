# frozen_string_literal: true

require "sidekiq"

# Sidekiq's client middleware runs for rustq's pushes as Sidekiq::Client runs it.
RSpec.describe Rustq::ClientMiddleware do
  # What apps put in Sidekiq.configure_client: tags every job, stops the ones it must not push.
  let(:middleware) do
    Class.new do
      def call(klass, job, queue, pool)
        first = job["args"].first
        return false if first == "veto" || (first.is_a?(Hash) && first["arguments"] == ["veto"])

        job["request_id"] = "req-42"
        job["seen"] = {"class" => klass.to_s, "queue" => queue, "pool" => pool.respond_to?(:with), "at" => job.key?("at"), "jid" => job["jid"]}
        yield
      end
    end
  end

  def client_chain
    Sidekiq.respond_to?(:default_configuration) ? Sidekiq.default_configuration.client_middleware : Sidekiq.client_middleware
  end

  before do
    stub_const("TaggedMiddleware", middleware)
    stub_const("NoteJob", Class.new { include Rustq::Job })
    Sidekiq.configure_client { |config| config.client_middleware { |chain| chain.add TaggedMiddleware } }
  end

  after { client_chain.remove(TaggedMiddleware) }

  it "runs for every push: single, scheduled, bulk, Rustq::Job and ActiveJob; a middleware that does not yield stops that job" do
    jid = NoteJob.perform_async("hello")
    payload = queue_payloads.first
    expect(payload).to include("jid" => jid, "request_id" => "req-42")
    expect(payload["seen"]).to eq("class" => "NoteJob", "queue" => "default", "pool" => true, "at" => false, "jid" => jid)

    expect(NoteJob.perform_async("veto")).to be_nil
    expect(Rustq::Client.push("class" => "NoteJob", "args" => ["veto"])).to be_nil
    expect(queue_payloads.size).to eq(1)

    later = NoteJob.perform_in(600, "later")
    job, = scheduled.first
    expect(job).to include("jid" => later, "request_id" => "req-42")
    expect(job["seen"]["at"]).to be(true)

    jids = Rustq::Client.push_bulk("class" => NoteJob, "args" => [[1], ["veto"], [2]])
    expect(jids.map(&:nil?)).to eq([false, true, false])
    bulk = queue_payloads.last(2)
    expect(bulk.map { |p| [p["jid"], p["args"], p["request_id"]] }).to eq([[jids[0], [1], "req-42"], [jids[2], [2], "req-42"]])

    stub_const("PingJob", Class.new(ActiveJob::Base) {
      self.queue_adapter = :rustq
      def perform(*) = nil
    })
    job = PingJob.perform_later("ping")
    aj = queue_payloads.find { |p| p["wrapped"] == "PingJob" }
    expect(aj).to include("jid" => job.provider_job_id, "request_id" => "req-42")
    expect(aj["seen"]["class"]).to eq("ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper")

    jobs = [PingJob.new("a"), PingJob.new("veto"), PingJob.new("b")]
    expect(ActiveJob::QueueAdapters::RustqAdapter.new.enqueue_all(jobs)).to eq(2)
    expect(jobs.map(&:successfully_enqueued?)).to eq([true, false, true])
  end

  it "runs under Rustq::Testing's fake mode as well, bulk pushes included" do
    require "rustq/testing"
    Rustq::Testing.fake! do
      jids = Rustq::Client.push_bulk("class" => NoteJob, "args" => [[1], ["veto"], [2]])
      expect(jids.map(&:nil?)).to eq([false, true, false])
      expect(NoteJob.jobs.map { |job| [job["jid"], job["request_id"]] }).to eq([[jids[0], "req-42"], [jids[2], "req-42"]])
    end
  ensure
    Rustq::Job.clear_all
    Rustq::Testing.disable!
  end

  it "is skipped (nothing run, nothing parsed) when the chain is empty" do
    client_chain.remove(TaggedMiddleware)
    expect(described_class.chain).to be_nil
    NoteJob.perform_async("plain")
    expect(queue_payloads.first).not_to have_key("request_id")
  end
end
