# frozen_string_literal: true

RSpec.describe ActiveJob::QueueAdapters::RustqAdapter do
  before do
    stub_const("GreetJob", Class.new(ActiveJob::Base) {
      self.queue_adapter = :rustq
      queue_as :mailers
      def perform(*) = nil
    })
    stub_const("OtherJob", Class.new(ActiveJob::Base) {
      self.queue_adapter = :rustq
      def perform(*) = nil
    })
  end

  # ActiveJob 7.1+ keeps scheduled_at as a Time, 6.1 as a Float.
  def scheduled_at(epoch) = ActiveJob.version >= Gem::Version.new("7.1") ? Time.at(epoch) : epoch

  it "is what queue_adapter = :rustq resolves to" do
    expect(GreetJob.queue_adapter).to be_a(described_class)
    expect(ActiveJob::QueueAdapters.lookup(:rustq)).to eq(described_class)
  end

  it "enqueue writes what Rails' Sidekiq adapter writes, and sets provider_job_id" do
    job = GreetJob.perform_later("bob", {"n" => 1})

    raw = redis.lrange("queue:mailers", 0, -1).first
    payload = JSON.parse(raw)
    expect(payload.keys).to eq(%w[retry queue class wrapped args jid created_at enqueued_at])
    expect(payload).to include("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "GreetJob", "queue" => "mailers")
    expect(payload["args"].size).to eq(1)
    expect(payload["args"][0].keys).to eq(job.serialize.keys)
    expect(payload["args"][0]).to include("job_class" => "GreetJob", "job_id" => job.job_id, "arguments" => ["bob", {"n" => 1, "_aj_symbol_keys" => []}])
    expect(job.provider_job_id).to eq(payload["jid"])
  end

  it "enqueue_at schedules at the job's time" do
    job = GreetJob.set(wait: 120).perform_later("later")

    payload, score = scheduled.first
    expect(score).to be_within(5).of(Time.now.to_f + 120)
    expect(payload["jid"]).to eq(job.provider_job_id)
    expect(payload).not_to have_key("at")
  end

  it "enqueue_all pushes in bulk, per class, queue and schedule, and reports on every job" do
    now = Time.now.to_f
    jobs = [GreetJob.new(1), GreetJob.new(2), OtherJob.new(3), GreetJob.new(4).tap { |j| j.scheduled_at = scheduled_at(now + 300) }]

    expect(described_class.new.enqueue_all(jobs)).to eq(4)
    expect(jobs.map(&:provider_job_id)).to all(match(/\A\h{24}\z/))
    expect(jobs).to all(be_successfully_enqueued)
    expect(queue_payloads("mailers").map { |p| p["args"][0]["arguments"] }).to eq([[1], [2]])
    expect(queue_payloads("default").map { |p| p["jid"] }).to eq([jobs[2].provider_job_id])
    expect(scheduled.map { |payload, score| [payload["jid"], score.round] }).to eq([[jobs[3].provider_job_id, (now + 300).round]])
  end

  it "Rustq.perform_all_later gives Rails 6.1 the bulk path" do
    jobs = [GreetJob.new("a"), GreetJob.new("b")]
    Rustq.perform_all_later(jobs)

    expect(queue_payloads("mailers").map { |p| p["jid"] }).to eq(jobs.map(&:provider_job_id))
    expect(jobs).to all(be_successfully_enqueued)
  end

  it "answers Rails 7.2's and 8.1's questions" do
    adapter = described_class.new
    expect(adapter.enqueue_after_transaction_commit?).to be(true)
    expect(adapter.stopping?).to be(false)
    Rustq.stopping = true
    expect(adapter.stopping?).to be(true)
  ensure
    Rustq.stopping = false
  end

  it "resolves :rustq whichever of rustq and ActiveJob is required first" do
    lib = File.expand_path("../../lib", __dir__)
    [%w[active_job rustq], %w[active_support rustq active_job], %w[rustq active_job]].each do |order|
      script = "#{order.map { |f| "require #{f.inspect}" }.join(";")}; ActiveJob::Base.queue_adapter = :rustq; print ActiveJob::Base.queue_adapter.class"
      out = IO.popen(["ruby", "-I", lib, "-e", script], err: [:child, :out], &:read)
      expect(out).to eq("ActiveJob::QueueAdapters::RustqAdapter"), "#{order.join(", ")}: #{out}"
    end
  end
end
