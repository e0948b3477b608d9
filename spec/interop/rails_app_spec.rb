# frozen_string_literal: true

# A real (single-file) Rails 6.1 app with `config.active_job.queue_adapter = :rustq` enqueues;
# a real Sidekiq 6.4.1 process that loads the same app runs the jobs.
RSpec.describe "a Rails 6.1 app using rustq as its ActiveJob adapter", :rails_app do
  # Sidekiq 8 runs ActiveJob only on Rails >= 7.0: no Rails 6.1 app runs its jobs in Sidekiq 8.
  before { skip "Sidekiq #{Sidekiq::VERSION} needs Rails >= 7.0 for ActiveJob; this app is Rails 6.1" if defined?(Sidekiq::VERSION) && Sidekiq::VERSION >= "8" }

  let(:app) { "./spec/fixtures/rails_app.rb" }

  it "enqueues perform_later, set(wait:) and bulk jobs that Sidekiq runs" do
    root = SidekiqProcess::ROOT
    out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", File.join(root, "lib"), app], chdir: root, err: [:child, :out], &:read)
    expect($?).to be_success, out
    enqueued = JSON.parse(out.lines.last)
    expect(enqueued["adapter"]).to eq("ActiveJob::QueueAdapters::RustqAdapter")
    expect(redis.llen("queue:mailers")).to eq(3)
    expect(redis.zcard("schedule")).to eq(1)

    sidekiq = SidekiqProcess.new(app, queues: %w[mailers]).start
    begin
      done = sidekiq.results(redis, 4, timeout: 60).to_h { |r| [r["jid"], r] }
    ensure
      sidekiq.stop
    end
    expect(done.fetch(enqueued["now"])).to eq("jid" => enqueued["now"], "class" => "WelcomeJob", "args" => ["now", {"user" => 1, "tags" => ["a", 2.5]}])
    expect(done.fetch(enqueued["later"])["args"]).to eq(["later"])
    expect(enqueued["bulk"].map { |jid| done.fetch(jid)["args"] }).to eq([["bulk", 1], ["bulk", 2]])
  end
end
