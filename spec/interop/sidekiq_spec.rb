# frozen_string_literal: true

require "sidekiq"
# Sidekiq 7.x defines its ActiveJob wrapper in sidekiq/rails (loaded by Rails apps).
require "sidekiq/rails" if Sidekiq::VERSION.start_with?("7.")
require "active_job/queue_adapters/sidekiq_adapter"

# rustq pushes, a real Sidekiq process (6.4.1, or 7.3/8.1 under bin/test-interop) runs the jobs:
# arguments arrive intact, and the payloads match what Sidekiq's own client writes, key for key.
RSpec.describe "Sidekiq #{Sidekiq::VERSION} runs what rustq pushes" do
  ARGS = [
    [1, "two", 3.5, nil, true, false],
    [{"nested" => {"list" => [1, [2, {"deep" => "é ☃ 😀"}]]}}],
    ["quotes \" and \\ backslash", "control \u0001\t\n\r", "</script> & / <>"],
    [12_345_678_901_234_567_890, -0.0001, 1.0e20, 2.5e-7],
    []
  ].freeze

  before do
    stub_const("RecordJob", Class.new { include Rustq::Job })
    stub_const("Billing::ChargeJob", Class.new {
      include Rustq::Job
      rustq_options queue: "critical", retry: 3
    })
    stub_const("RecordActiveJob", Class.new(ActiveJob::Base) { self.queue_adapter = :rustq })
  end

  context "with a Sidekiq process" do
    before(:context) { @sidekiq = SidekiqProcess.new("./spec/fixtures/sidekiq_jobs.rb").start }
    after(:context) { @sidekiq.stop }

    def results(count, timeout: 30)
      @sidekiq.results(redis, count, timeout: timeout).to_h { |r| [r["jid"], r] }
    end

    it "runs Rustq::Job pushes: perform_async, set(queue:), perform_bulk" do
      jids = ARGS.map { |args| RecordJob.perform_async(*args) }
      charge = Billing::ChargeJob.perform_async("card", 100)
      bulk = RecordJob.set(queue: "critical").perform_bulk([["b", 1], ["b", 2]])

      done = results(ARGS.size + 3)
      jids.zip(ARGS).each { |jid, args| expect(done.fetch(jid)).to eq("jid" => jid, "class" => "RecordJob", "args" => args) }
      expect(done.fetch(charge)["class"]).to eq("Billing::ChargeJob")
      expect(bulk.map { |jid| done.fetch(jid)["args"] }).to eq([["b", 1], ["b", 2]])
    end

    it "runs Rustq::Client.push_bulk jobs, immediate and scheduled" do
      now = Time.now.to_f
      now_jids = Rustq::Client.push_bulk("class" => "RecordJob", "args" => ARGS)
      later_jids = Rustq::Client.push_bulk("class" => RecordJob, "args" => [["s1"], ["s2"]], "at" => [now + 1, now + 2])

      done = results(ARGS.size + 2, timeout: 40)
      expect(now_jids.map { |jid| done.fetch(jid)["args"] }).to eq(ARGS)
      expect(later_jids.map { |jid| done.fetch(jid)["args"] }).to eq([["s1"], ["s2"]])
    end

    it "runs scheduled Rustq::Job pushes (perform_in, set(wait:))" do
      a = RecordJob.perform_in(1, "in")
      b = RecordJob.set(wait: 1).perform_async("wait")

      done = results(2, timeout: 40)
      expect([done.fetch(a)["args"], done.fetch(b)["args"]]).to eq([["in"], ["wait"]])
    end

    it "runs ActiveJob jobs enqueued through the rustq adapter: now, later and in bulk" do
      now_job = RecordActiveJob.perform_later("now", {"x" => [1, 2.5]})
      later_job = RecordActiveJob.set(wait: 1).perform_later("later")
      bulk = [RecordActiveJob.new("bulk", 1), RecordActiveJob.new("bulk", 2)]
      Rustq.perform_all_later(bulk)

      done = results(4, timeout: 40)
      expect(done.fetch(now_job.provider_job_id)).to include("class" => "RecordActiveJob", "args" => ["now", {"x" => [1, 2.5]}])
      expect(done.fetch(later_job.provider_job_id)["args"]).to eq(["later"])
      expect(bulk.map { |job| done.fetch(job.provider_job_id)["args"] }).to eq([["bulk", 1], ["bulk", 2]])
    end
  end

  context "payloads, compared with Sidekiq's own client" do
    # The same push through Sidekiq and through rustq: same keys in the same order, same values
    # apart from jid and timestamps.
    def compare(sidekiq_push, rustq_push, key: "queue:default", classes: nil)
      redis.flushdb
      sidekiq_push.call
      theirs = redis.lrange(key, 0, -1).map { |j| JSON.parse(j) }
      redis.flushdb
      rustq_push.call
      ours = redis.lrange(key, 0, -1).map { |j| JSON.parse(j) }
      expect(ours.size).to eq(theirs.size)
      ours.zip(theirs).each do |mine, sidekiqs|
        # Same keys in the same order as the Sidekiq under test writes them; the adapter follows
        # Rails' own (class first), where Sidekiq 7.3's own adapter puts class after args:
        # readers of JSON objects do not see an order, so there the keys are compared as sets.
        if mine["wrapped"] && Sidekiq::VERSION >= "7"
          expect(mine.keys.sort).to eq(sidekiqs.keys.sort)
        else
          expect(mine.keys).to eq(sidekiqs.keys)
        end
        volatile = %w[jid created_at enqueued_at]
        expect(mine.except(*volatile, "args", "class")).to eq(sidekiqs.except(*volatile, "args", "class"))
        expect([sidekiqs["class"], mine["class"]]).to eq(classes || [mine["class"]] * 2)
        expect(mine["args"].to_json.gsub(/"job_id":"[^"]+"|"enqueued_at":"[^"]+"|"provider_job_id":[^,]+/, "")).to eq(
          sidekiqs["args"].to_json.gsub(/"job_id":"[^"]+"|"enqueued_at":"[^"]+"|"provider_job_id":[^,]+/, "")
        )
      end
    end

    before do
      stub_const("SidekiqCharge", Class.new {
        include Sidekiq::Worker
        sidekiq_options queue: "critical", retry: 3, backtrace: true
      })
      stub_const("RustqCharge", Class.new {
        include Rustq::Job
        rustq_options queue: "critical", retry: 3, backtrace: true
      })
    end

    it "perform_async, set(...).perform_async and perform_bulk" do
      classes = %w[SidekiqCharge RustqCharge]
      compare(-> { SidekiqCharge.perform_async(1, "a") }, -> { RustqCharge.perform_async(1, "a") }, key: "queue:critical", classes: classes)
      compare(-> { SidekiqCharge.set(queue: "low", tags: ["x"]).perform_async(2) },
        -> { RustqCharge.set(queue: "low", tags: ["x"]).perform_async(2) }, key: "queue:low", classes: classes)
      compare(-> { SidekiqCharge.perform_bulk([[1], [2]]) }, -> { RustqCharge.perform_bulk([[1], [2]]) }, key: "queue:critical", classes: classes)
    end

    it "Client.push and push_bulk with a String class and extra options" do
      item = {"class" => "Billing::ChargeJob", "args" => ARGS[1], "queue" => "default", "retry" => 5, "bid" => "B-1"}
      compare(-> { Sidekiq::Client.push(item.dup) }, -> { Rustq::Client.push(item.dup) })
      bulk = {"class" => "RecordJob", "args" => ARGS}
      compare(-> { Sidekiq::Client.push_bulk(bulk.dup) }, -> { Rustq::Client.push_bulk(bulk.dup) })
    end

    it "the ActiveJob adapter writes what Rails' Sidekiq adapter writes" do
      stub_const("CompareJob", Class.new(ActiveJob::Base) { queue_as :default })
      # Sidekiq 8's adapter names its own wrapper; rustq writes Rails' name, which 8.x keeps as an
      # alias of it and which 6.x and 7.x processes beside it also resolve.
      classes = if Sidekiq::VERSION >= "8"
        %w[Sidekiq::ActiveJob::Wrapper ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper]
      end
      compare(-> { CompareJob.queue_adapter = :sidekiq; CompareJob.perform_later("x", {"y" => 1}) },
        -> { CompareJob.queue_adapter = :rustq; CompareJob.perform_later("x", {"y" => 1}) }, classes: classes)
    end
  end
end
