# frozen_string_literal: true

RSpec.describe Rustq::Client do
  describe ".push" do
    it "writes Sidekiq's payload to queue:<q> and the queues set, and returns the jid" do
      jid = described_class.push("class" => "HardJob", "args" => [1, "two"], "queue" => "critical")

      expect(jid).to match(/\A\h{24}\z/)
      expect(redis.smembers("queues")).to eq(["critical"])
      payload = queue_payloads("critical").first
      expect(payload.keys).to eq(%w[retry queue class args jid created_at enqueued_at])
      expect(payload).to include("class" => "HardJob", "args" => [1, "two"], "queue" => "critical", "retry" => true, "jid" => jid)
      expect(payload["created_at"]).to be_within(5).of(Time.now.to_f)
    end

    it "takes Symbol keys, a Class, a Symbol queue, and keeps unknown options in order" do
      klass = Class.new { def self.name = "Billing::ChargeJob" }
      stub_const("Billing::ChargeJob", klass)
      described_class.push(class: klass, args: [], queue: :billing, retry: 3, bid: "B-1", tags: [:vip], lock: "acct-1")

      raw = redis.lrange("queue:billing", 0, -1).first
      expect(raw).to start_with('{"retry":3,"queue":"billing","class":"Billing::ChargeJob","args":[],"bid":"B-1","tags":["vip"],"lock":"acct-1","jid":')
    end

    it "writes numbers and strings exactly as Ruby's JSON does" do
      args = [12_345_678_901_234_567_890, -0.0001, 1.0e20, 2.5e-7, 1_700_000_000.5, "é ☃ 😀", "quote \" \\ \u0001", nil, true, false]
      described_class.push("class" => "A", "args" => args)

      raw = redis.lrange("queue:default", 0, -1).first
      expect(raw).to include(JSON.generate(args))
      expect(JSON.parse(raw)["args"]).to eq(args)
    end

    it "schedules a job with 'at' in the schedule set, scored by it, without 'at' in the JSON" do
      at = Time.now.to_f + 3600
      jid = described_class.push("class" => "A", "args" => [1], "at" => at)

      payload, score = scheduled.first
      expect(payload["jid"]).to eq(jid)
      expect(payload).not_to have_key("at")
      expect(payload).not_to have_key("enqueued_at")
      expect(score).to be_within(0.001).of(at)
      expect(redis.exists?("queue:default")).to be(false)
    end

    it "keeps a caller's jid" do
      expect(described_class.push("class" => "A", "args" => [], "jid" => "f" * 24)).to eq("f" * 24)
    end

    it "carries the caller's OpenTelemetry context as top-level keys, where opentelemetry-instrumentation-sidekiq writes them" do
      require_relative "../support/open_telemetry_stand_in"
      stub_const("OpenTelemetry", OpenTelemetryStandIn)
      parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
      context = OpenTelemetry::Context.new("traceparent" => parent, "tracestate" => "k=v")
      OpenTelemetry::Context.with_current(context) do
        described_class.push("class" => "A", "args" => [1])
        described_class.push_bulk("class" => "A", "args" => [[2], [3]])
        described_class.push("class" => "A", "args" => [4], "traceparent" => "00-#{"1" * 32}-#{"2" * 16}-01") # a middleware's own
      end
      described_class.push("class" => "A", "args" => [5]) # no context: no keys
      payloads = queue_payloads.sort_by { |p| p["args"].first }
      expect(payloads.first(3).map { |p| p.values_at("traceparent", "tracestate") }).to all(eq([parent, "k=v"]))
      expect(payloads[3]["traceparent"]).to eq("00-#{"1" * 32}-#{"2" * 16}-01")
      expect(payloads[4].keys).not_to include("traceparent", "tracestate", "baggage")
    end

    it "publishes enqueue.rustq (ActiveSupport::Notifications) once per push, not for ActiveJob's own" do
      require "active_support/notifications"
      events = []
      subscriber = ActiveSupport::Notifications.subscribe("enqueue.rustq") { |*, payload| events << payload }
      jid = described_class.push("class" => "A", "args" => [1], "queue" => "low")
      jids = described_class.push_bulk("class" => "A", "args" => [[2], [3]])
      described_class.push("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "B", "args" => [{}])
      expect(events).to eq([{class: "A", jids: [jid], queue: "low", at: nil}, {class: "A", jids: jids, queue: "default", at: nil}])
    ensure
      ActiveSupport::Notifications.unsubscribe(subscriber) if subscriber
    end
  end

  describe ".push_bulk" do
    it "pushes one job per Array of args and returns the jids in order" do
      jids = described_class.push_bulk("class" => "A", "args" => [[1], [2], [3]])

      expect(jids.size).to eq(3)
      expect(jids.uniq.size).to eq(3)
      expect(queue_payloads.map { |p| [p["jid"], p["args"]] }).to eq(jids.zip([[1], [2], [3]]))
    end

    it "writes more than one slice of 1,000 jobs" do
      jids = described_class.push_bulk("class" => "A", "args" => (1..2_500).map { |i| [i] })

      expect(jids.size).to eq(2_500)
      expect(redis.llen("queue:default")).to eq(2_500)
    end

    it "schedules every job at one time, or each at its own" do
      now = Time.now.to_f
      described_class.push_bulk("class" => "A", "args" => [[1], [2]], "at" => now + 60)
      described_class.push_bulk("class" => "B", "args" => [[3], [4]], "at" => [now + 100, now + 200])

      scores = scheduled.map { |payload, score| [payload["args"], score.round(3)] }
      expect(scores).to contain_exactly([[1], (now + 60).round(3)], [[2], (now + 60).round(3)],
        [[3], (now + 100).round(3)], [[4], (now + 200).round(3)])
    end

    it "returns [] for no jobs" do
      expect(described_class.push_bulk("class" => "A", "args" => [])).to eq([])
    end

    it "writes every job's arguments exactly as Ruby's JSON does" do
      latin1 = "caf\xE9".dup.force_encoding(Encoding::ISO_8859_1)
      all_args = [
        [12_345_678_901_234_567_890, -12_345_678_901_234_567_890, -0.0001, 1.0e20, 2.5e-7, 1_700_000_000.5],
        ["é ☃ 😀", "quote \" \\ \u0001 \n", latin1, "", nil, true, false],
        [{"a" => [1, {"b" => [[], {}]}], "ü" => {"x" => nil}}, [[[-1]]]],
        []
      ]
      jids = described_class.push_bulk("class" => "A", "args" => all_args)

      raws = redis.lrange("queue:default", 0, -1).reverse
      expect(raws.size).to eq(4)
      raws.zip(all_args, jids).each do |raw, args, jid|
        expected = JSON.generate(args.map { |a| a.is_a?(String) ? a.encode(Encoding::UTF_8) : a })
        expect(raw).to include(%("args":#{expected},"jid":"#{jid}"))
        expect(JSON.parse(raw)["args"]).to eq(JSON.parse(expected))
      end
    end

    it "returns jids that are ordinary, independent Strings" do
      jids = described_class.push_bulk("class" => "A", "args" => [[1], [2]])

      expect(jids).to all(be_an_instance_of(String))
      expect(jids.map(&:encoding).uniq).to eq([Encoding::UTF_8])
      jids.first << "!"
      expect(jids.last).to match(/\A\h{24}\z/)
    end
  end

  describe "bad pushes" do
    after { expect(redis.dbsize).to eq(0), "a refused push wrote to Redis" }

    def refused(item, bulk = false)
      bulk ? described_class.push_bulk(item) : described_class.push(item)
    rescue Rustq::InvalidJob => e
      e.message
    else
      raise "expected #{item.inspect} to be refused"
    end

    native_json = "must be native JSON types, but"

    {
      [:sym] => ":sym is a Symbol",
      [{a: 1}] => ":a is a Symbol",
      [Object.new.tap { |o| def o.inspect = "#<Thing>" }] => "#<Thing> is a Object",
      [Float::NAN] => "NaN is a Float",
      [[1, [Float::INFINITY]]] => "Infinity is a Float",
      [Time.at(0).utc] => "1970-01-01 00:00:00 UTC is a Time",
      [{"ok" => {"deep" => :no}}] => ":no is a Symbol"
    }.each do |args, detail|
      it "refuses #{args.inspect} (#{detail}) with Sidekiq 7's message" do
        message = refused("class" => "HardJob", "args" => args)
        expect(message).to eq("Job arguments to HardJob #{native_json} #{detail}.\nSee https://github.com/sidekiq/sidekiq/wiki/Best-Practices")
      end
    end

    it "names the ActiveJob class (wrapped) in the native-JSON message" do
      message = refused("class" => "Wrapper", "wrapped" => "MyActiveJob", "args" => [:x])
      expect(message).to start_with("Job arguments to MyActiveJob must be native JSON types")
    end

    it "refuses bad jobs with Sidekiq's messages" do
      expect(refused("args" => [])).to eq("Job must be a Hash with 'class' and 'args' keys")
      expect(refused("class" => "A")).to eq("Job must be a Hash with 'class' and 'args' keys")
      expect(refused("class" => "A", "args" => 1)).to eq("Job args must be an Array")
      expect(refused("class" => 42, "args" => [])).to eq("Job class must be either a Class or String representation of the class name")
      expect(refused("class" => "A", "args" => [], "at" => "soon")).to eq("Job 'at' must be a Numeric timestamp")
      expect(refused("class" => "A", "args" => [], "at" => Time.now)).to eq("Job 'at' must be a Numeric timestamp")
      expect(refused("class" => "A", "args" => [], "queue" => "")).to eq("Job must include a valid queue name")
      expect(refused("class" => "A", "args" => [], "queue" => "bad queue!")).to start_with("Job must include a valid queue name")
      expect(refused("not a hash")).to eq("Job must be a Hash with 'class' and 'args' keys")
    end

    it "refuses bad bulk pushes with Sidekiq's messages" do
      expect(refused({"class" => "A", "args" => [1, 2]}, true)).to eq("Bulk arguments must be an Array of Arrays: [[1], [2]]")
      expect(refused({"class" => "A", "args" => [[1], [2]], "at" => [1]}, true)).to eq("Job 'at' Array must have same size as 'args' Array")
      expect(refused({"class" => "A", "args" => [[1]], "at" => "x"}, true)).to eq("Job 'at' must be a Numeric or an Array of Numeric timestamps")
      expect(refused({"class" => "A", "args" => [[1], [:two]]}, true)).to include(":two is a Symbol")
    end

    it "refuses a bulk push whose last job has a bad argument, writing none of the jobs" do
      all_args = Array.new(25_000) { |i| [i, {"n" => i.to_s}] }
      all_args[-1] = [1, {"n" => :oops}]

      message = refused({"class" => "HardJob", "args" => all_args}, true)
      expect(message).to eq("Job arguments to HardJob #{native_json} :oops is a Symbol.\nSee https://github.com/sidekiq/sidekiq/wiki/Best-Practices")
    end

    it "refuses the same bad arguments in a bulk push as in a single push" do
      [[:sym], [{a: 1}], [Float::NAN], [[1, [Float::INFINITY]]], [Time.at(0).utc], [{"ok" => {"deep" => :no}}]].each do |args|
        single = refused("class" => "HardJob", "args" => args)
        expect(refused({"class" => "HardJob", "args" => [[1], args]}, true)).to eq(single)
      end
      loop_args = []
      loop_args << loop_args
      expect(refused({"class" => "A", "args" => [loop_args]}, true)).to include("nest deeper than 100")
    end

    it "refuses self-containing arguments instead of recursing forever" do
      loop_args = []
      loop_args << loop_args
      expect(refused("class" => "A", "args" => loop_args)).to include("nest deeper than 100")
    end

    it "is an ArgumentError, as Sidekiq's are" do
      expect { described_class.push("class" => "A", "args" => [:x]) }.to raise_error(ArgumentError)
    end
  end
end
