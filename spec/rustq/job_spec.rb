# frozen_string_literal: true

RSpec.describe Rustq::Job do
  before do
    stub_const("PlainJob", Class.new { include Rustq::Job })
    stub_const("CriticalJob", Class.new {
      include Rustq::Job
      rustq_options queue: "critical", retry: 3, backtrace: true
    })
  end

  it "perform_async writes Sidekiq's key order: options, args, class" do
    jid = PlainJob.perform_async(1, "two", {"three" => [3.0]})

    raw = redis.lrange("queue:default", 0, -1).first
    expect(raw).to start_with(%({"retry":true,"queue":"default","args":[1,"two",{"three":[3.0]}],"class":"PlainJob","jid":"#{jid}","created_at":))
    expect(JSON.parse(raw).keys.last).to eq("enqueued_at")
  end

  it "puts the class's options first" do
    CriticalJob.perform_async("x")

    expect(queue_payloads("critical").first.keys.first(6)).to eq(%w[retry queue backtrace args class jid])
    expect(queue_payloads("critical").first).to include("retry" => 3, "backtrace" => true)
  end

  it "perform_in and perform_at schedule (relative seconds, or an epoch time/Time)" do
    now = Time.now.to_f
    PlainJob.perform_in(60, "in")
    PlainJob.perform_at(Time.at(now + 120), "at")
    PlainJob.perform_in(-5, "now")

    expect(scheduled.map { |payload, score| [payload["args"], (score - now).round] }).to contain_exactly([["in"], 60], [["at"], 120])
    expect(scheduled.first.first.keys.first(4)).to eq(%w[retry queue class args])
    expect(queue_payloads.map { |p| p["args"] }).to eq([["now"]])
  end

  it "set takes queue, retry, wait, wait_until and any other option" do
    PlainJob.set(queue: "low", retry: false, tags: ["a"]).perform_async(1)
    PlainJob.set(wait: 30).perform_async(2)
    PlainJob.set("wait_until" => Time.now + 90, "queue" => "later").perform_async(3)

    expect(queue_payloads("low").first).to include("queue" => "low", "retry" => false, "tags" => ["a"], "args" => [1])
    expect(queue_payloads("low").first.keys.first(4)).to eq(%w[retry queue tags args])
    expect(scheduled.map { |payload, _| [payload["queue"], payload["args"]] }).to contain_exactly(["default", [2]], ["later", [3]])
  end

  it "perform_bulk pushes in batches and returns every jid" do
    jids = PlainJob.perform_bulk((1..5).map { |i| [i] }, batch_size: 2)

    expect(jids.size).to eq(5)
    expect(queue_payloads.map { |p| p["args"] }).to eq((1..5).map { |i| [i] })
    expect(queue_payloads.map { |p| p["jid"] }).to eq(jids)
  end

  it "set(...).perform_bulk keeps the options" do
    CriticalJob.set(queue: "bulk").perform_bulk([[1], [2]])
    expect(queue_payloads("bulk").map { |p| [p["queue"], p["retry"]] }).to eq([["bulk", 3], ["bulk", 3]])
  end

  it "sidekiq_options is rustq_options; subclasses inherit and override" do
    stub_const("SidekiqStyleJob", Class.new {
      include Rustq::Job
      sidekiq_options queue: :mail
    })
    stub_const("ChildJob", Class.new(CriticalJob) { rustq_options retry: 1 })

    expect(SidekiqStyleJob.get_sidekiq_options).to eq("retry" => true, "queue" => :mail)
    expect(ChildJob.get_rustq_options).to eq("retry" => 1, "queue" => "critical", "backtrace" => true)
    ChildJob.perform_async
    expect(queue_payloads("critical").first).to include("class" => "ChildJob", "retry" => 1)
    SidekiqStyleJob.perform_async
    expect(queue_payloads("mail").size).to eq(1)
  end

  it "keeps the retry hooks on the class for the worker, under both names" do
    retry_in = proc { |count, _error| 10 * count }
    exhausted = proc { |job, _error| job }
    CriticalJob.rustq_retry_in(&retry_in)
    CriticalJob.sidekiq_retries_exhausted(&exhausted)
    stub_const("InheritingJob", Class.new(CriticalJob))

    expect(CriticalJob.rustq_retry_in_block).to be(retry_in)
    expect(CriticalJob.sidekiq_retry_in_block.call(2, nil)).to eq(20)
    expect(CriticalJob.rustq_retries_exhausted_block).to be(exhausted)
    expect(InheritingJob.sidekiq_retries_exhausted_block).to be(exhausted)
    expect(PlainJob.rustq_retry_in_block).to be_nil
  end

  it "refuses non-JSON arguments and writes nothing" do
    expect { PlainJob.perform_async(:symbol) }.to raise_error(Rustq::InvalidJob, /Job arguments to PlainJob must be native JSON types, but :symbol is a Symbol/)
    expect { PlainJob.perform_bulk([[1], [Object.new]]) }.to raise_error(Rustq::InvalidJob, /is a Object/)
    expect(redis.dbsize).to eq(0)
  end

  it "perform_inline runs the job now, after a JSON round trip" do
    stub_const("InlineJob", Class.new {
      include Rustq::Job
      class << self; attr_accessor :seen; end
      def perform(*args) = self.class.seen = [jid, args]
    })
    InlineJob.perform_inline(1, {"a" => 2.5})

    expect(InlineJob.seen[0]).to match(/\A\h{24}\z/)
    expect(InlineJob.seen[1]).to eq([1, {"a" => 2.5}])
    expect(redis.dbsize).to eq(0)
  end

  it "cannot be included in an ActiveJob" do
    expect { Class.new(ActiveJob::Base) { include Rustq::Job } }.to raise_error(ArgumentError, /cannot be included in an ActiveJob/)
  end

  it "gives an ActiveJob class options and retry hooks with Rustq::Job::Options, inherited, without the client API" do
    retry_in = ->(count, _error) { count * 10 }
    exhausted = ->(_job, _error) {}
    parent = Class.new(ActiveJob::Base) do
      include Rustq::Job::Options
      sidekiq_options retry: 3, "backtrace" => true
      sidekiq_retry_in(&retry_in)
    end
    child = Class.new(parent) { rustq_retries_exhausted(&exhausted) }

    expect(child.get_sidekiq_options).to include("retry" => 3, "backtrace" => true)
    expect([child.sidekiq_retry_in_block, child.sidekiq_retries_exhausted_block]).to eq([retry_in, exhausted])
    expect(parent.rustq_retries_exhausted_block).to be_nil
    expect(child).not_to respond_to(:perform_async)
  end
end
