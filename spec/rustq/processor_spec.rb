# frozen_string_literal: true

# Rustq::Processor runs one job for rustq-worker and answers the engine: nil, or a failure with
# Sidekiq's fields and when to retry. These run it in this process, without a worker.
RSpec.describe Rustq::Processor do
  subject(:processor) { described_class.new(logger: Logger.new(nil)) }

  before do
    stub_const("ProcessorSpecJob", Class.new do
      include Rustq::Job
      class << self; attr_accessor :runs; end
      self.runs = []
      def perform(*args) = self.class.runs << [jid, args]
    end)
    stub_const("ProcessorSpecFailingJob", Class.new do
      include Rustq::Job
      class << self; attr_accessor :exhausted; end
      self.exhausted = []
      rustq_retry_in { |count, error| error.message == "raise" ? raise("bad block") : {"30" => 30 + count, "kill" => :kill, "discard" => :discard}[error.message] }
      rustq_retries_exhausted { |msg, error| exhausted << [msg["jid"], msg["retry_count"], error.message] }
      def perform(how) = how == "exit" ? exit(2) : raise(ArgumentError, how)
    end)
  end

  def payload(klass, args, extra = {})
    JSON.generate({"class" => klass, "args" => args, "jid" => "0123456789abcdef01234567", "queue" => "default"}.merge(extra))
  end

  it "runs a job class with its jid and arguments, and answers nil" do
    expect(processor.process(payload("ProcessorSpecJob", [1, "a"]), "default", "retry")).to be_nil
    expect(ProcessorSpecJob.runs).to eq([["0123456789abcdef01234567", [1, "a"]]])
  end

  it "refuses constants that are not job classes, never calling them, straight to the dead set" do
    stub_const("NotAJob", Class.new { def self.new(*) = raise("must not be instantiated") })
    %w[Kernel File Object NotAJob].each do |name|
      result = processor.process(payload(name, ["x"]), "default", "retry")
      expect(result).to include("error_class" => "Rustq::NotAJobClass", "retry_in" => "kill")
      expect(result["message"]).to start_with("#{name} is not a job class")
    end
    wrapped = payload("ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", [{"job_class" => "NotAJob", "arguments" => []}])
    expect(processor.process(wrapped, "default", "retry")).to include("error_class" => "Rustq::NotAJobClass")
  end

  it "fails an unknown class with Sidekiq's NameError, retried as usual" do
    result = processor.process(payload("NoSuchProcessorJob", []), "default", "retry")
    expect(result).to include("error_class" => "NameError", "message" => "uninitialized constant NoSuchProcessorJob")
    expect(result["retry_in"]).to be_nil
  end

  it "turns exceptions into Sidekiq's fields, exit included" do
    result = processor.process(payload("ProcessorSpecFailingJob", ["exit"]), "default", "no_retry")
    expect(result).to include("error_class" => "SystemExit", "message" => "exit")
    expect(result["backtrace"]).to all(be_a(String))
    expect(result["backtrace"].first).to include(__FILE__)
  end

  it "asks retry_in (count, exception) while retries are left: seconds, :kill (exhausted hook) or :discard" do
    expect(processor.process(payload("ProcessorSpecFailingJob", ["30"], "retry_count" => 2), "default", "retry")["retry_in"]).to eq(33)
    expect(processor.process(payload("ProcessorSpecFailingJob", ["30"]), "default", "retry")["retry_in"]).to eq(30)
    expect(processor.process(payload("ProcessorSpecFailingJob", ["discard"]), "default", "retry")["retry_in"]).to eq("discard")
    expect(processor.process(payload("ProcessorSpecFailingJob", ["raise"]), "default", "retry")["retry_in"]).to be_nil
    expect(ProcessorSpecFailingJob.exhausted).to be_empty
    expect(processor.process(payload("ProcessorSpecFailingJob", ["kill"]), "default", "retry")["retry_in"]).to eq("kill")
    expect(ProcessorSpecFailingJob.exhausted).to eq([["0123456789abcdef01234567", 0, "kill"]])
  end

  it "calls the exhausted hook only when the engine says the job goes to the dead set" do
    processor.process(payload("ProcessorSpecFailingJob", ["30"], "retry_count" => 4), "default", "exhausted")
    processor.process(payload("ProcessorSpecFailingJob", ["30"]), "default", "no_retry")
    expect(ProcessorSpecFailingJob.exhausted).to eq([["0123456789abcdef01234567", 5, "30"]])
  end

  it "hands the hooks the payload with this failure recorded by the engine's own code" do
    stub_const("ProcessorSpecMsgJob", Class.new do
      include Rustq::Job
      class << self; attr_accessor :seen; end
      rustq_retries_exhausted { |msg, _error| self.seen = msg }
      def perform = raise(ArgumentError, "x" * 20_000)
    end)
    processor.process(payload("ProcessorSpecMsgJob", [], "retry_count" => 1, "retry_queue" => "low"), "default", "exhausted")
    msg = ProcessorSpecMsgJob.seen
    # What the engine writes into the retry and dead sets: truncated message, retried_at, the retry queue.
    expect(msg).to include("error_class" => "ArgumentError", "retry_count" => 2, "queue" => "low")
    expect(msg["error_message"].length).to be <= 10_000
    expect(msg["retried_at"]).to be_a(Float)
  end

  it "publishes perform.rustq around each job, then retry.rustq or dead.rustq for a failure (ActiveSupport::Notifications)" do
    require "active_support/notifications"
    events = []
    subscriber = ActiveSupport::Notifications.subscribe(/\.rustq\z/) do |name, *, fields|
      events << [name, fields.except(:error, :exception, :exception_object), (fields[:error] || fields[:exception_object])&.message]
    end
    processor.process(payload("ProcessorSpecJob", [1]), "default", "retry")
    processor.process(payload("ProcessorSpecFailingJob", ["30"], "retry_count" => 1), "low", "retry")
    processor.process(payload("ProcessorSpecFailingJob", ["kill"]), "default", "retry")
    job = {jid: "0123456789abcdef01234567"}
    ok = job.merge(class: "ProcessorSpecJob", queue: "default")
    failing = job.merge(class: "ProcessorSpecFailingJob", queue: "low")
    dying = job.merge(class: "ProcessorSpecFailingJob", queue: "default")
    expect(events).to eq([
      ["perform.rustq", ok, nil],
      ["perform.rustq", failing, "30"], ["retry.rustq", failing.merge(retry_count: 2), "30"],
      ["perform.rustq", dying, "kill"], ["dead.rustq", dying, "kill"]
    ])
  ensure
    ActiveSupport::Notifications.unsubscribe(subscriber) if subscriber
  end

  it "runs a job inside the OpenTelemetry context its payload carries, when the app loads OpenTelemetry" do
    require_relative "../support/open_telemetry_stand_in"
    stub_const("OpenTelemetry", OpenTelemetryStandIn)
    seen = []
    stub_const("ProcessorSpecTracedJob", Class.new do
      include Rustq::Job
      define_method(:perform) { seen << OpenTelemetry::Context.current.headers }
    end)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    processor.process(payload("ProcessorSpecTracedJob", [], "traceparent" => parent, "baggage" => "u=1"), "default", "retry")
    processor.process(payload("ProcessorSpecTracedJob", []), "default", "retry")
    expect(seen).to eq([{"traceparent" => parent, "baggage" => "u=1"}, {}])
  end

  it "reads a retry_in block's value by the engine's one rule" do
    native = Rustq.const_get(:Native)
    expect(native.retry_in(30)).to eq(30)
    expect(native.retry_in(2.9)).to eq(2)
    expect(native.retry_in(0)).to be_nil
    expect(native.retry_in(-5)).to be_nil
    expect(native.retry_in(nil)).to be_nil
    expect(native.retry_in(:kill)).to eq("kill")
    expect(native.retry_in("discard")).to eq("discard")
    expect(native.retry_in("later")).to be_nil
  end

  it "takes its signal names and their meaning from the engine's one table" do
    require "rustq/cli"
    expect(Rustq::CLI::SIGNALS).to eq("TERM" => "stop", "INT" => "stop", "TSTP" => "quiet", "USR1" => "quiet", "TTIN" => "dump")
  end

  describe "#process_active_job (what rustq-worker calls for an ActiveJob payload)" do
    let(:wrapper) { "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper" }
    let(:jid) { "0123456789abcdef01234567" }
    # Stands in for the engine's Running: the whole payload, made only when asked.
    let(:source_class) do
      Struct.new(:whole, :asked) do
        def payload
          self.asked += 1
          whole
        end

        def payload_json = JSON.generate(whole)
      end
    end

    before do
      require "active_job"
      ActiveJob::Base.logger = Logger.new(nil)
      stub_const("ProcessorSpecActiveJob", Class.new(ActiveJob::Base) do
        class << self; attr_accessor :runs; end
        self.runs = []
        def perform(how) = how == "fail" ? raise(ArgumentError, "boom") : self.class.runs << [provider_job_id, how]
      end)
    end

    def parts(how, job_class = "ProcessorSpecActiveJob")
      data = ProcessorSpecActiveJob.new(how).serialize.merge("job_class" => job_class)
      whole = JSON.parse(payload(wrapper, [data], "wrapped" => job_class))
      [whole["args"].first, source_class.new(whole, 0)]
    end

    it "runs the job with its provider_job_id from the payload's args[0] alone" do
      data, source = parts("ok")
      expect(processor.process_active_job(data, jid, wrapper, "default", "retry", source)).to be_nil
      expect(ProcessorSpecActiveJob.runs).to eq([[jid, "ok"]])
      expect(data["provider_job_id"]).to be_nil
      expect(source.asked).to eq(0)
    end

    it "makes the whole payload for a failure, with Sidekiq's fields" do
      data, source = parts("fail")
      result = processor.process_active_job(data, jid, wrapper, "default", "retry", source)
      expect(result).to include("error_class" => "ArgumentError", "message" => "boom")
      expect(source.asked).to be >= 1
    end

    it "refuses a job_class that is not an ActiveJob class, naming the wrapper" do
      stub_const("NotAJob", Class.new { def self.new(*) = raise("must not be instantiated") })
      data, source = parts("ok", "NotAJob")
      result = processor.process_active_job(data, jid, wrapper, "default", "retry", source)
      expect(result).to include("error_class" => "Rustq::NotAJobClass", "retry_in" => "kill")
      expect(result["message"]).to eq(%("NotAJob" (wrapped by #{wrapper}) is not an ActiveJob class))
    end

    describe "ActionMailer's delivery jobs" do
      before do
        require "action_mailer"
        ActionMailer::Base.delivery_method = :test
        ActionMailer::Base.deliveries.clear
        stub_const("ProcessorSpecMailer", Class.new(ActionMailer::Base) do
          def self.name = "ProcessorSpecMailer"
          def hello(to) = mail(to: to, from: "app@example.com", subject: "hello", body: "hi")
        end)
      end

      def delivery(mailer, method, how, args:)
        data = ActionMailer::MailDeliveryJob.new(mailer, method, how, args: args).serialize
        [data, source_class.new(JSON.parse(payload(wrapper, [data])), 0)]
      end

      it "delivers a mailer's action, and refuses anything else a Redis writer could name (Kernel.system)" do
        data, source = delivery("ProcessorSpecMailer", "hello", "deliver_now", args: ["a@example.com"])
        expect(processor.process_active_job(data, jid, wrapper, "mailers", "retry", source)).to be_nil
        expect(ActionMailer::Base.deliveries.size).to eq(1)

        marker = File.join(Dir.tmpdir, "rustq-pwned-#{Process.pid}")
        [["Kernel", "system", "deliver_now"], ["ProcessorSpecMailer", "instance_eval", "deliver_now"],
         ["ProcessorSpecMailer", "hello", "exit"]].each do |mailer, method, how|
          data, source = delivery(mailer, method, how, args: ["touch #{marker}"])
          result = processor.process_active_job(data, jid, wrapper, "mailers", "retry", source)
          expect(result).to include("error_class" => "Rustq::NotAJobClass", "retry_in" => "kill")
        end
        expect(File.exist?(marker)).to be(false)
        expect(ActionMailer::Base.deliveries.size).to eq(1)
      end

      it "with allowed_mailers, delivers only theirs" do
        strict = described_class.new(logger: Logger.new(nil), allowed_mailers: ["OtherMailer"])
        data, source = delivery("ProcessorSpecMailer", "hello", "deliver_now", args: ["a@example.com"])
        result = strict.process_active_job(data, jid, wrapper, "mailers", "retry", source)
        expect(result).to include("error_class" => "Rustq::NotAJobClass")
        expect(result["message"]).to include("allowed_mailers")
        expect(ActionMailer::Base.deliveries).to be_empty
      end
    end

    it "with allowed_jobs, runs only the classes it names, checked before anything is looked up" do
      strict = described_class.new(logger: Logger.new(nil), allowed_jobs: ["ProcessorSpecJob", "ProcessorSpecAllowed::*"])
      expect(strict.process(payload("ProcessorSpecJob", [1]), "default", "retry")).to be_nil
      result = strict.process(payload("ProcessorSpecFailingJob", ["30"]), "default", "retry")
      expect(result).to include("error_class" => "Rustq::NotAJobClass", "retry_in" => "kill")
      expect(result["message"]).to eq("ProcessorSpecFailingJob is not in allowed_jobs")
      # An ActiveJob is checked by its job_class, whichever path it takes.
      data, source = parts("ok")
      result = strict.process_active_job(data, jid, wrapper, "default", "retry", source)
      expect(result).to include("error_class" => "Rustq::NotAJobClass")
      expect(strict.process(payload(wrapper, [data]), "default", "retry")).to include("error_class" => "Rustq::NotAJobClass")
      expect(ProcessorSpecActiveJob.runs).to be_empty
      # A name that is not allowed is never looked up (no autoload, no const_missing).
      expect(Object).not_to receive(:const_get)
      strict.process(payload("Some::Unknown", []), "default", "retry")
    end

    it "decides by the class a wrapper's name resolves to, however it is spelled" do
      require "sidekiq"
      require "tempfile"
      require "active_job/queue_adapters/sidekiq_adapter"
      stub_const("NotAJob", Class.new { def self.new(*) = raise("must not be instantiated") })
      %w[NotAJob Tempfile].each do |job_class|
        data = ProcessorSpecActiveJob.new("ok").serialize.merge("job_class" => job_class)
        spelled = "Object::#{wrapper}"
        result = processor.process(payload(spelled, [data]), "default", "retry")
        expect(result).to include("error_class" => "Rustq::NotAJobClass", "retry_in" => "kill")
        expect(result["message"]).to include(job_class.inspect)
      end
      expect(ProcessorSpecActiveJob.runs).to be_empty
      # A real job spelled that way still runs, as an ActiveJob.
      data = ProcessorSpecActiveJob.new("ok").serialize
      expect(processor.process(payload("Object::#{wrapper}", [data]), "default", "retry")).to be_nil
      expect(ProcessorSpecActiveJob.runs).to eq([["0123456789abcdef01234567", "ok"]])
    end
  end
end
